//! The status annotation on the Node (`kwasm.sh/kwasm-status`): a small JSON document with the phase,
//! the installed shims, the last error and the time.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Provisioning,
    /// Installed; waiting for a cluster-wide restart slot ([fleet]).
    WaitingForRestart,
    Provisioned,
    Failed,
    Removing,
    RemoveBlocked,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusDoc {
    pub phase: Phase,
    pub shims: Vec<ShimDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub time: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShimDoc {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl StatusDoc {
    /// The phase a status annotation says (None: absent or not ours to read).
    pub fn phase_in(annotation: Option<&str>) -> Option<Phase> {
        serde_json::from_str::<StatusDoc>(annotation?)
            .ok()
            .map(|d| d.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_is_read_back_and_garbage_is_no_phase() {
        let doc = StatusDoc {
            phase: Phase::Failed,
            shims: vec![],
            error: Some("boom".into()),
            time: "2026-12-05T10:00:00Z".into(),
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert!(text.contains("\"phase\":\"Failed\""), "{text}");
        assert_eq!(StatusDoc::phase_in(Some(&text)), Some(Phase::Failed));
        assert_eq!(StatusDoc::phase_in(Some("{not json")), None);
        assert_eq!(StatusDoc::phase_in(Some("{\"phase\":\"Exploded\"}")), None);
        assert_eq!(StatusDoc::phase_in(None), None);
    }
}
