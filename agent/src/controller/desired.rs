//! What the Node asks of the agent: the trigger (annotation or label), the optional shim subset, the
//! node's architecture, and whether an uninstall of the chart asked every agent to undo.

use k8s_openapi::api::core::v1::Node;

use crate::arch::Arch;
use crate::node_contract::trigger::{annotation, asks_for_shims, named_shims};
pub use crate::node_contract::uninstall_request::Uninstall;
use crate::settings::TriggerSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub triggered: bool,
    /// From the shims annotation; None: every shim in the catalog the node can run.
    pub shims: Option<Vec<String>>,
    pub arch: Option<Arch>,
    pub uninstall: Uninstall,
}

/// `uninstall`: the node's uninstall request as the agent judged it (`UninstallJudge`).
pub fn desired(node: &Node, t: &TriggerSettings, uninstall: Uninstall) -> Desired {
    let triggered = asks_for_shims(node, t);
    let shims =
        annotation(node, &t.shims_annotation).map(|v| named_shims(v).map(str::to_owned).collect());
    let arch = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .and_then(|i| i.architecture.parse().ok());
    Desired {
        triggered: triggered && uninstall != Uninstall::Requested,
        shims,
        arch,
        uninstall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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
        let desired = |n: &Node, t: &TriggerSettings| super::desired(n, t, Uninstall::None);
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
        let desired = |n: &Node, t: &TriggerSettings| super::desired(n, t, Uninstall::None);
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
    fn an_uninstall_wins_over_the_trigger_unless_it_is_stale() {
        let t = TriggerSettings::default();
        let n = node(&[("kwasm.sh/kwasm-node", "true")], &[], "amd64");
        let d = desired(&n, &t, Uninstall::Requested);
        assert_eq!((d.triggered, d.uninstall), (false, Uninstall::Requested));
        let d = desired(&n, &t, Uninstall::Stale);
        assert_eq!((d.triggered, d.uninstall), (true, Uninstall::Stale));
    }
}
