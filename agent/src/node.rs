//! Kubernetes, for one node: what the Node asks for (trigger annotation or label, optional shim subset,
//! architecture), and what the agent reports on it (the provisioned label, the status annotation,
//! Events). Patches carry the Node's resourceVersion so a concurrent writer is never overwritten; a
//! conflict re-reads the Node and tries again.

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;

use crate::arch::Arch;
use crate::settings::TriggerSettings;

pub const PROVISIONED_LABEL: &str = "kwasm.sh/kwasm-provisioned";
pub const STATUS_ANNOTATION: &str = "kwasm.sh/kwasm-status";

/// What the Node asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub triggered: bool,
    /// From the shims annotation; None: every shim in the catalog.
    pub shims: Option<Vec<String>>,
    pub arch: Option<Arch>,
}

pub fn desired(node: &Node, t: &TriggerSettings) -> Desired {
    let meta = &node.metadata;
    let is_true = |m: &Option<BTreeMap<String, String>>, k: &str| {
        m.as_ref()
            .and_then(|m| m.get(k))
            .map(|v| v == "true")
            .unwrap_or(false)
    };
    let triggered = is_true(&meta.annotations, &t.annotation) || is_true(&meta.labels, &t.label);
    let shims = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(&t.shims_annotation))
        .map(|v| {
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

pub fn label(node: &Node, key: &str) -> Option<String> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key).cloned())
}

/// The small JSON document in the status annotation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusDoc {
    pub phase: String,
    pub shims: Vec<ShimDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub time: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShimDoc {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

pub struct NodeClient {
    pub api: Api<Node>,
    events: Api<Event>,
    pub name: String,
    instance: String,
}

/// What to set on the Node: the label (None removes it) and the status annotation (None removes it).
pub struct Report<'a> {
    pub provisioned: Option<bool>,
    pub status: Option<&'a StatusDoc>,
}

impl NodeClient {
    pub fn new(client: Client, name: &str) -> Self {
        Self {
            api: Api::all(client.clone()),
            events: Api::namespaced(client, "default"),
            name: name.to_owned(),
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| format!("kwasm-agent-{name}")),
        }
    }

    pub async fn get(&self) -> anyhow::Result<Node> {
        self.api
            .get(&self.name)
            .await
            .with_context(|| format!("reading node {}", self.name))
    }

    /// Merge-patch the label and annotation, guarded by resourceVersion; on conflict re-read and retry.
    pub async fn report(&self, r: Report<'_>) -> anyhow::Result<()> {
        let want_label = r
            .provisioned
            .map(|b| serde_json::Value::String(b.to_string()))
            .unwrap_or(serde_json::Value::Null);
        let annotation = match r.status {
            Some(s) => serde_json::Value::String(serde_json::to_string(s)?),
            None => serde_json::Value::Null,
        };
        for attempt in 1..=5 {
            let node = self.get().await?;
            let has_label = label(&node, PROVISIONED_LABEL);
            let has_annotation = node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(STATUS_ANNOTATION).cloned());
            if has_label.as_deref() == want_label.as_str()
                && has_annotation.as_deref() == annotation.as_str()
            {
                return Ok(());
            }
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": node.metadata.resource_version,
                    "labels": { PROVISIONED_LABEL: want_label },
                    "annotations": { STATUS_ANNOTATION: annotation },
                }
            });
            match self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::info!(
                        attempt,
                        "node changed under the patch (409); re-reading and retrying"
                    );
                }
                Err(e) => return Err(e).with_context(|| format!("patching node {}", self.name)),
            }
        }
        anyhow::bail!(
            "node {} kept changing; gave up patching after 5 conflicts",
            self.name
        )
    }

    /// A core/v1 Event on the Node (what `kubectl describe node` shows).
    pub async fn event(&self, warning: bool, reason: &str, message: &str) {
        let now = chrono_now();
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.kwasm.", self.name)),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.name.clone()),
                uid: Some(self.name.clone()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.chars().take(1000).collect()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            source: Some(EventSource {
                component: Some("kwasm-agent".into()),
                host: Some(self.name.clone()),
            }),
            reporting_component: Some("kwasm.sh/kwasm-agent".into()),
            reporting_instance: Some(self.instance.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some(reason.into()),
            count: Some(1),
            ..Default::default()
        };
        if let Err(e) = self.events.create(&PostParams::default(), &ev).await {
            tracing::warn!(reason, error = %e, "could not record an Event on the node");
        }
    }
}

fn chrono_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: &[(&str, &str)], annotations: &[(&str, &str)], arch: &str) -> Node {
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
}
