//! The status document (`node_contract::status`) as this agent fills it from the host's state.

use crate::clock::now_rfc3339;
use crate::engine::State;
use crate::node_contract::status::{Phase, ShimDoc, StatusDoc};

pub fn status_doc(state: &State, phase: Phase, error: Option<String>) -> StatusDoc {
    StatusDoc {
        phase,
        shims: state
            .shims
            .values()
            .map(|s| ShimDoc {
                name: s.name.clone(),
                version: s.version.clone(),
                sha256: s.binary_sha256.clone(),
            })
            .collect(),
        error,
        time: now_rfc3339(),
    }
}
