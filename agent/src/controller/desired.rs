//! What the Node asks of the agent: the trigger (annotation or label), the optional shim subset, the
//! node's architecture, and whether an uninstall of the chart asked every agent to undo.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::arch::Arch;
use crate::settings::TriggerSettings;

/// Set by `kwasm-agent uninstall` (the chart's pre-delete hook) with the time it asked.
pub const UNINSTALL_ANNOTATION: &str = "kwasm.sh/uninstall";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub triggered: bool,
    /// From the shims annotation; None: every shim in the catalog the node can run.
    pub shims: Option<Vec<String>>,
    pub arch: Option<Arch>,
    pub uninstall: Uninstall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uninstall {
    None,
    /// The chart is being uninstalled: undo everything, whatever the trigger says.
    Requested,
    /// Left by an earlier uninstall, before this agent started: to be cleared, not obeyed.
    Stale,
}

/// `started`: when this agent started; an uninstall asked before that was for an earlier install.
pub fn desired(node: &Node, t: &TriggerSettings, started: std::time::SystemTime) -> Desired {
    let triggered = asks_for_shims(node, t);
    let shims =
        annotation(node, &t.shims_annotation).map(|v| named_shims(v).map(str::to_owned).collect());
    let arch = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .and_then(|i| i.architecture.parse().ok());
    let uninstall = match annotation(node, UNINSTALL_ANNOTATION) {
        None => Uninstall::None,
        Some(at) => match humantime::parse_rfc3339_weak(at) {
            Ok(at) if at < started => Uninstall::Stale,
            _ => Uninstall::Requested,
        },
    };
    Desired {
        triggered: triggered && uninstall != Uninstall::Requested,
        shims,
        arch,
        uninstall,
    }
}

/// The shim names in a shims annotation (`spin, wasmtime`).
pub fn named_shims(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The trigger: the annotation or the label set to "true".
pub fn asks_for_shims(node: &Node, t: &TriggerSettings) -> bool {
    meta_asks_for_shims(&node.metadata, t)
}

/// The same, from a Node's metadata alone (what the catalog controller watches).
pub fn meta_asks_for_shims(meta: &ObjectMeta, t: &TriggerSettings) -> bool {
    let get = |m: &Option<std::collections::BTreeMap<String, String>>, k: &str| {
        m.as_ref().and_then(|m| m.get(k)).map(String::as_str) == Some("true")
    };
    get(&meta.annotations, &t.annotation) || get(&meta.labels, &t.label)
}

pub fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

pub fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    pub fn node(labels: &[(&str, &str)], annotations: &[(&str, &str)], arch: &str) -> Node {
        let map = |kv: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": map(labels), "annotations": map(annotations)},
            "status": {"nodeInfo": {"architecture": arch, "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": ""}}
        }))
        .unwrap()
    }

    #[test]
    fn annotation_or_label_triggers_and_shims_annotation_narrows() {
        let t = TriggerSettings::default();
        let desired = |n: &Node, t: &TriggerSettings| super::desired(n, t, UNIX_EPOCH);
        assert!(!desired(&node(&[], &[], "amd64"), &t).triggered);
        assert!(desired(&node(&[], &[("kwasm.sh/kwasm-node", "true")], "amd64"), &t).triggered);
        assert!(desired(&node(&[("kwasm.sh/kwasm-node", "true")], &[], "amd64"), &t).triggered);
        assert!(!desired(&node(&[("kwasm.sh/kwasm-node", "false")], &[], "amd64"), &t).triggered);
        let d = desired(
            &node(
                &[],
                &[
                    ("kwasm.sh/kwasm-node", "true"),
                    ("kwasm.sh/shims", "spin, wasmtime"),
                ],
                "arm64",
            ),
            &t,
        );
        assert_eq!(
            d.shims,
            Some(vec!["spin".to_owned(), "wasmtime".to_owned()])
        );
        assert_eq!(d.arch, Some(Arch::Arm64));
    }

    #[test]
    fn odd_node_objects_ask_for_nothing_strange() {
        let t = TriggerSettings::default();
        let desired = |n: &Node, t: &TriggerSettings| super::desired(n, t, UNIX_EPOCH);
        // An unknown architecture, a trigger that is not exactly "true", an empty shim list.
        let d = desired(
            &node(
                &[("kwasm.sh/kwasm-node", "TRUE")],
                &[("kwasm.sh/kwasm-node", " true"), ("kwasm.sh/shims", " , ,")],
                "mips64",
            ),
            &t,
        );
        assert!(!d.triggered);
        assert_eq!(d.shims, Some(vec![]));
        assert_eq!(d.arch, None);
        // No metadata maps and no status at all.
        let bare: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n1"}})).unwrap();
        assert_eq!(
            desired(&bare, &t),
            Desired {
                triggered: false,
                shims: None,
                arch: None,
                uninstall: Uninstall::None,
            }
        );
    }

    #[test]
    fn an_uninstall_wins_over_the_trigger_unless_it_predates_this_agent() {
        let t = TriggerSettings::default();
        let n = node(
            &[("kwasm.sh/kwasm-node", "true")],
            &[(UNINSTALL_ANNOTATION, "2026-11-24T18:00:00Z")],
            "amd64",
        );
        let before = humantime::parse_rfc3339("2026-11-24T17:00:00Z").unwrap();
        let after = humantime::parse_rfc3339("2026-11-24T19:00:00Z").unwrap();
        let d = desired(&n, &t, before);
        assert_eq!((d.triggered, d.uninstall), (false, Uninstall::Requested));
        let d = desired(&n, &t, after);
        assert_eq!((d.triggered, d.uninstall), (true, Uninstall::Stale));
        // Garbage in the annotation is obeyed: an uninstall is never silently ignored.
        let odd = node(
            &[("kwasm.sh/kwasm-node", "true")],
            &[(UNINSTALL_ANNOTATION, "soon")],
            "amd64",
        );
        assert_eq!(desired(&odd, &t, after).uninstall, Uninstall::Requested);
    }
}
