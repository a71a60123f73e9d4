//! This node's Node object: read it, and set what the agent reports on it — the provisioned label, one
//! readiness label and one version label per shim, and the status annotation. Patches carry the
//! Node's resourceVersion so a concurrent writer is never overwritten; a conflict re-reads the Node
//! and tries again.

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::node_contract::labels::{
    shim_ready_label, shim_version_label, PROVISIONED_LABEL, SHIM_READY_PREFIX,
    SHIM_VERSION_PREFIX, STATUS_ANNOTATION,
};
use crate::node_contract::status::{Phase, StatusDoc};
use crate::node_contract::trigger::{annotation, label};
use crate::node_contract::uninstall_request::UNINSTALL_ANNOTATION;
const CONFLICT_ATTEMPTS: u32 = 5;

#[derive(Clone)]
pub struct NodeClient {
    pub api: Api<Node>,
    pub name: String,
}

/// What to set on the Node: the label (None removes it), the status annotation (None removes it), and
/// the shims it shows (every other shim label goes).
pub struct Report<'a> {
    pub provisioned: Option<bool>,
    pub status: Option<&'a StatusDoc>,
    pub shims: &'a [ShimLabel],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimLabel {
    pub name: String,
    pub ready: bool,
    pub version: String,
}

/// The labels `report` manages, as they should be (None: absent).
fn wanted_labels(node: &Node, r: &Report<'_>) -> BTreeMap<String, Option<String>> {
    let mut want: BTreeMap<String, Option<String>> = node
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(SHIM_READY_PREFIX) || k.starts_with(SHIM_VERSION_PREFIX))
        .map(|k| (k.clone(), None))
        .collect();
    want.insert(
        PROVISIONED_LABEL.to_owned(),
        r.provisioned.map(|b| b.to_string()),
    );
    for s in r.shims {
        want.insert(shim_ready_label(&s.name), Some(s.ready.to_string()));
        want.insert(shim_version_label(&s.name), Some(s.version.clone()));
    }
    want
}

impl NodeClient {
    pub fn new(client: Client, name: &str) -> Self {
        Self {
            api: Api::all(client),
            name: name.to_owned(),
        }
    }

    pub async fn get(&self) -> anyhow::Result<Node> {
        self.api
            .get(&self.name)
            .await
            .with_context(|| format!("reading node {}", self.name))
    }

    /// Merge-patch the label and annotation, guarded by resourceVersion; on conflict re-read and
    /// retry. Starts from `node` (the caller's latest copy) and patches nothing when it already says
    /// what the report says. Returns the Node as it is afterwards.
    pub async fn report(&self, node: &Node, r: Report<'_>) -> anyhow::Result<Node> {
        let want_annotation = r.status.map(serde_json::to_string).transpose()?;
        let mut node = node.clone();
        for attempt in 1..=CONFLICT_ATTEMPTS {
            let labels = wanted_labels(&node, &r);
            if labels.iter().all(|(k, v)| label(&node, k) == v.as_deref())
                && annotation(&node, STATUS_ANNOTATION) == want_annotation.as_deref()
            {
                return Ok(node);
            }
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": node.metadata.resource_version,
                    "labels": labels,
                    "annotations": { STATUS_ANNOTATION: want_annotation },
                }
            });
            match self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(n) => return Ok(n),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::info!(
                        attempt,
                        "node changed under the patch (409); re-reading and retrying"
                    );
                    node = self.get().await?;
                }
                Err(e) => return Err(e).with_context(|| format!("patching node {}", self.name)),
            }
        }
        anyhow::bail!(
            "node {} kept changing; gave up patching after {CONFLICT_ATTEMPTS} conflicts",
            self.name
        )
    }
}

impl NodeClient {
    /// Remove every taint with `key` (the startup taint), keeping all others; a no-op without one.
    pub async fn remove_taint(&self, node: &Node, key: &str) -> anyhow::Result<bool> {
        let mut node = node.clone();
        for _ in 0..CONFLICT_ATTEMPTS {
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if !taints.iter().any(|t| t.key == key) {
                return Ok(false);
            }
            let kept: Vec<_> = taints.into_iter().filter(|t| t.key != key).collect();
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": node.metadata.resource_version },
                "spec": { "taints": kept },
            });
            match self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => node = self.get().await?,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing taint {key} from node {}", self.name))
                }
            }
        }
        anyhow::bail!("node {} kept changing", self.name)
    }

    /// Set the status annotation's phase (keeping what else it says); labels stay as they are.
    /// Returns the Node as patched.
    pub async fn set_phase(&self, phase: Phase) -> anyhow::Result<Node> {
        self.set_phase_from(None, phase).await
    }

    /// `set_phase`, only while the phase is `from` (when given): a change made off the reconcile's
    /// path never overwrites a phase the reconcile reported since.
    pub async fn set_phase_from(&self, from: Option<Phase>, phase: Phase) -> anyhow::Result<Node> {
        for _ in 0..CONFLICT_ATTEMPTS {
            let node = self.get().await?;
            let current: Option<StatusDoc> =
                annotation(&node, STATUS_ANNOTATION).and_then(|a| serde_json::from_str(a).ok());
            if from.is_some_and(|f| current.as_ref().map(|d| d.phase) != Some(f)) {
                return Ok(node);
            }
            let mut doc = current
                .unwrap_or_else(|| super::report::status_doc(&Default::default(), phase, None));
            doc.phase = phase;
            doc.error = None;
            doc.time = crate::clock::now_rfc3339();
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": node.metadata.resource_version,
                    "annotations": { STATUS_ANNOTATION: serde_json::to_string(&doc)? },
                }
            });
            match self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(patched) => return Ok(patched),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e).with_context(|| format!("patching node {}", self.name)),
            }
        }
        anyhow::bail!("node {} kept changing", self.name)
    }
}

/// Clear an uninstall request left by an earlier install of the chart (`Uninstall::Stale`).
pub async fn clear_stale_uninstall(nodes: &NodeClient, node: &Node) -> anyhow::Result<()> {
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": node.metadata.resource_version,
            "annotations": { UNINSTALL_ANNOTATION: null },
        }
    });
    nodes
        .api
        .patch(&nodes.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("clearing a stale uninstall request on node {}", nodes.name))?;
    Ok(())
}
