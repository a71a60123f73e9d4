//! Is a shim still running containers? Two ways to know, one answer: the host's process table (a
//! running container is owned by a shim process executing the binary; needs the host's PID
//! namespace) or containerd's own API (containers of the shim's runtime whose task is alive; needs
//! only containerd's socket). `containerd.in_use` chooses; `auto` takes the processes when the agent
//! sees them.

mod api;
pub mod processes;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::host::HostRoot;
use crate::settings::InUseCheck;

/// One user of a shim: a shim process (from the process table) or a container with a live task
/// (from containerd's API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimUser {
    /// The container or pod sandbox ID.
    pub id: Option<String>,
    /// The containerd namespace (`k8s.io` for pods), when containerd answered.
    pub namespace: Option<String>,
    /// The shim's PID (process table) or the container's (containerd).
    pub pid: Option<u32>,
}

impl fmt::Display for ShimUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.id.as_deref().unwrap_or("?");
        match &self.namespace {
            Some(ns) => write!(f, "container {ns}/{id}")?,
            None => write!(f, "shim {id}")?,
        }
        if let Some(pid) = self.pid {
            write!(f, " (pid {pid})")?;
        }
        Ok(())
    }
}

/// What identifies one shim's users.
#[derive(Debug, Clone)]
pub struct ShimQuery {
    /// The runtime type containerd records for containers started through its handler.
    pub runtime_type: Option<String>,
    /// Host paths a container may name the shim by, or a shim process may execute.
    pub executables: Vec<PathBuf>,
    /// Only users started before this (an earlier version is still run only by containers created
    /// before the switch to the current one); containerd's answer only: a process has its binary.
    pub started_before: Option<SystemTime>,
}

pub struct InUse {
    check: InUseCheck,
    socket: PathBuf,
}

impl InUse {
    pub fn new(check: InUseCheck, host: &HostRoot, socket: PathBuf) -> Self {
        let check = match check {
            InUseCheck::Auto if sees_host_processes(host) => InUseCheck::Processes,
            InUseCheck::Auto => InUseCheck::Containerd,
            c => c,
        };
        Self { check, socket }
    }

    pub fn method(&self) -> InUseCheck {
        self.check
    }

    /// Everything running on the shim. An error when containerd cannot be asked: not knowing is
    /// not "unused".
    pub async fn users(&self, q: &ShimQuery) -> anyhow::Result<Vec<ShimUser>> {
        match self.check {
            InUseCheck::Containerd => api::users(&self.socket, q).await,
            _ => {
                let paths = q.executables.clone();
                Ok(
                    tokio::task::spawn_blocking(move || processes::shims_running(&paths))
                        .await
                        .unwrap_or_default(),
                )
            }
        }
    }
}

/// The agent sees the host's processes when the host root is `/`, or when PID 1's root directory is
/// the host root (a pod with hostPID: PID 1 is the host's init). Not when PID 1 is the pod's own
/// (no hostPID), a pod's pause process (a shared process namespace), or hidden from the agent.
fn sees_host_processes(host: &HostRoot) -> bool {
    use std::os::unix::fs::MetadataExt;
    if host.root() == Path::new("/") {
        return true;
    }
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    matches!((id(Path::new("/proc/1/root")), id(host.root())), (Some(init), Some(root)) if init == root)
}
