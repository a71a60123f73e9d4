//! Exactly what the agent added to containerd's configuration, so `remove` can take away that and
//! nothing else.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigOwnership {
    pub config: PathBuf,
}
