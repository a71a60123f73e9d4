//! What the Node asks of the agent: the trigger (annotation or label), the optional shim subset, and
//! the node's architecture.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

use crate::arch::Arch;
use crate::settings::TriggerSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub triggered: bool,
    /// From the shims annotation; None: every shim in the catalog the node can run.
    pub shims: Option<Vec<String>>,
    pub arch: Option<Arch>,
}

pub fn desired(node: &Node, t: &TriggerSettings) -> Desired {
    let meta = &node.metadata;
    let is_true = |m: &Option<BTreeMap<String, String>>, k: &str| {
        m.as_ref()
            .and_then(|m| m.get(k))
            .is_some_and(|v| v == "true")
    };
    let triggered = is_true(&meta.annotations, &t.annotation) || is_true(&meta.labels, &t.label);
    let shims = annotation(node, &t.shims_annotation).map(|v| {
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let arch = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .and_then(|i| i.architecture.parse().ok());
    Desired {
        triggered,
        shims,
        arch,
    }
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
                arch: None
            }
        );
    }
}
