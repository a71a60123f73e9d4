//! Restart permits: what the grantor and the nodes agree on. A node asks by showing the phase
//! WaitingForRestart on its own Node; the grantor grants by creating the node's permit, a Lease
//! `kwasm-agent-permit-<node>` held by the node, annotated `kwasm.sh/permit: granted`; the node
//! renews it while containerd may be down and gives it back by deleting it; the grantor deletes it
//! when it takes it back. Only the grantor creates permits; a node only renews and deletes its own
//! (the chart's admission policies say so).

use k8s_openapi::api::coordination::v1::Lease;

pub const PERMIT_LABEL: &str = "kwasm.sh/restart-permit";
pub const STATE: &str = "kwasm.sh/permit";
pub const GRANTED: &str = "granted";
/// The grantor's own Lease: who grants now.
pub const GRANTOR_LEASE: &str = "kwasm-agent-restart-grantor";

/// The permit Lease of `node`: a hash past the name's limit (a Node's name may be 253 characters).
pub fn name(node: &str) -> String {
    let name = format!("kwasm-agent-permit-{node}");
    if name.len() <= 253 {
        return name;
    }
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(node.as_bytes()));
    format!("kwasm-agent-permit-{}", &digest[..32])
}

/// The node a permit grants a restart to.
pub fn granted_to(lease: &Lease) -> Option<&str> {
    let annotations = lease.metadata.annotations.as_ref()?;
    (annotations.get(STATE).map(String::as_str) == Some(GRANTED)).then_some(())?;
    lease.spec.as_ref()?.holder_identity.as_deref()
}
