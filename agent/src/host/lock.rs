//! One agent at a time per host: an exclusive flock on `<install_dir>/lock`. The kernel drops it when the
//! process dies, so a killed agent never leaves a stale lock.

use std::fs::OpenOptions;
use std::path::Path;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

pub struct HostLock {
    _flock: Flock<std::fs::File>,
}

impl HostLock {
    /// Waits for another agent to finish rather than failing: two agents racing on one host (a rollout
    /// overlapping the old pod) should serialise, not error. The wait is an async poll, so the agent's
    /// health endpoints and its Node watch keep answering meanwhile, and a SIGTERM ends it at once.
    pub async fn acquire(path: &Path) -> anyhow::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        let mut waited = false;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => return Ok(Self { _flock: flock }),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    if !waited {
                        tracing::info!(lock = %path.display(), "another kwasm-agent holds the host lock; waiting");
                        waited = true;
                    }
                    file = f;
                    tokio::time::sleep(POLL).await;
                }
                Err((_, e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
        }
    }
}

/// How often a waiting agent tries the lock again: short next to any reconcile.
const POLL: std::time::Duration = std::time::Duration::from_millis(50);
