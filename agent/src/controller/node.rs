//! This node's Node object: read it, and set what the agent reports on it — the provisioned label and
//! the status annotation. Patches carry the Node's resourceVersion so a concurrent writer is never
//! overwritten; a conflict re-reads the Node and tries again.

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::desired::{annotation, label};
use super::report::StatusDoc;

pub const PROVISIONED_LABEL: &str = "kwasm.sh/kwasm-provisioned";
pub const STATUS_ANNOTATION: &str = "kwasm.sh/kwasm-status";
const CONFLICT_ATTEMPTS: u32 = 5;

pub struct NodeClient {
    pub api: Api<Node>,
    pub name: String,
}

/// What to set on the Node: the label (None removes it) and the status annotation (None removes it).
pub struct Report<'a> {
    pub provisioned: Option<bool>,
    pub status: Option<&'a StatusDoc>,
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
        let want_label = r.provisioned.map(|b| b.to_string());
        let want_annotation = r.status.map(serde_json::to_string).transpose()?;
        let mut node = node.clone();
        for attempt in 1..=CONFLICT_ATTEMPTS {
            if label(&node, PROVISIONED_LABEL) == want_label.as_deref()
                && annotation(&node, STATUS_ANNOTATION) == want_annotation.as_deref()
            {
                return Ok(node);
            }
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": node.metadata.resource_version,
                    "labels": { PROVISIONED_LABEL: want_label },
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
