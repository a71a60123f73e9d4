//! Kubernetes Events on the Node (what `kubectl describe node` shows), through kube's Recorder: the
//! Node's real UID in the reference, and repeats folded into one Event's series.

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Provisioning,
    WaitingForRestart,
    Provisioned,
    ProvisionFailed,
    DriftDetected,
    Removed,
    RemoveBlocked,
    RemoveFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Provisioning => "Provisioning",
            Reason::WaitingForRestart => "WaitingForRestart",
            Reason::Provisioned => "Provisioned",
            Reason::ProvisionFailed => "ProvisionFailed",
            Reason::DriftDetected => "DriftDetected",
            Reason::Removed => "Removed",
            Reason::RemoveBlocked => "RemoveBlocked",
            Reason::RemoveFailed => "RemoveFailed",
        }
    }

    fn warning(self) -> bool {
        matches!(
            self,
            Reason::ProvisionFailed
                | Reason::DriftDetected
                | Reason::RemoveBlocked
                | Reason::RemoveFailed
        )
    }

    fn action(self) -> &'static str {
        match self {
            Reason::Provisioning | Reason::Provisioned | Reason::ProvisionFailed => "Provision",
            Reason::WaitingForRestart => "Wait",
            Reason::DriftDetected => "Repair",
            Reason::Removed | Reason::RemoveBlocked | Reason::RemoveFailed => "Remove",
        }
    }
}

#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    pub fn new(client: Client, instance: String) -> Self {
        let reporter = Reporter {
            controller: "kwasm.sh/kwasm-agent".into(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Best effort: an Event that cannot be written is logged, never a reason to fail a reconcile.
    pub async fn publish(&self, node: &Node, reason: Reason, note: &str) {
        let ev = Event {
            type_: if reason.warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.as_str().into(),
            note: Some(crate::kube_client::event_note(note)),
            action: reason.action().into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference(node)).await {
            tracing::warn!(reason = reason.as_str(), error = %e, "could not record an Event on the node");
        }
    }
}

/// The Node as Events name it. No resourceVersion: the same Event on a later version of the Node is
/// the same series.
fn reference(node: &Node) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: node.metadata.name.clone(),
        uid: node.metadata.uid.clone(),
        ..Default::default()
    }
}
