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
    /// overlapping the old pod) should serialise, not error.
    pub fn acquire(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        let flock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                tracing::info!(lock = %path.display(), "another kwasm-agent holds the host lock; waiting");
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| e)
                    .with_context(|| format!("locking {}", path.display()))?
            }
            Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        };
        Ok(Self { _flock: flock })
    }
}
