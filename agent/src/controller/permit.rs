//! Restart permits: what the grantor and the nodes agree on. A node asks by showing the phase
//! WaitingForRestart on its own Node; the grantor grants by creating the node's permit, a Lease
//! `kwasm-agent-permit-<node>` held by the node, `granted` (an annotation); the node renews it
//! while containerd may be down and gives it back by deleting it; the grantor deletes it when it
//! takes it back. Only the grantor creates permits; a node only renews and deletes its own (the
//! chart's admission policies say so).

use k8s_openapi::api::coordination::v1::Lease;

pub const PERMIT_LABEL: &str = "kwasm.sh/restart-permit";
pub const STATE: &str = "kwasm.sh/permit";
/// The grantor's own Lease: who grants now.
pub const GRANTOR_LEASE: &str = "kwasm-agent-restart-grantor";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Granted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Granted => "granted",
        }
    }
}

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

pub fn state(lease: &Lease) -> Option<State> {
    match annotation(lease, STATE)? {
        "granted" => Some(State::Granted),
        _ => None,
    }
}

/// The node a permit is for.
pub fn node(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

fn annotation<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}
