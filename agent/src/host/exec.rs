//! Commands that must run *as the host*: restarting a unit, validating a config with the host's own
//! containerd, asking it for its defaults. When the host root is not `/` the agent runs in a pod with
//! hostPID, and the child joins PID 1's namespaces before exec; nothing else in the code knows how.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Context};
use nix::sched::{setns, CloneFlags};

use super::HostRoot;

const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone)]
pub struct HostExec {
    enter_namespaces: bool,
}

#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    /// The last few lines of what the command said, for an error message.
    pub fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self
            .stderr
            .lines()
            .chain(self.stdout.lines())
            .filter(|l| !l.trim().is_empty())
            .collect();
        all[all.len().saturating_sub(lines)..].join(" | ")
    }
}

impl HostExec {
    pub fn new(host: &HostRoot) -> Self {
        Self {
            enter_namespaces: host.root() != Path::new("/"),
        }
    }

    pub async fn run(&self, argv: &[String], timeout: Duration) -> anyhow::Result<ExecOutput> {
        let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
        let mut cmd = std::process::Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.enter_namespaces {
            let fds = open_host_namespaces()?;
            cmd.env("PATH", HOST_PATH);
            // SAFETY: only async-signal-safe calls (setns, chdir) run between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    for (fd, flag) in &fds {
                        setns(fd.as_fd(), *flag).map_err(std::io::Error::from)?;
                    }
                    nix::unistd::chdir("/").map_err(std::io::Error::from)?;
                    Ok(())
                });
            }
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("running {}", argv.join(" ")))?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                anyhow!(
                    "{} did not finish within {}",
                    argv.join(" "),
                    humantime::format_duration(timeout)
                )
            })??;
        Ok(ExecOutput {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// PID 1's namespaces (the host's, with hostPID). The mount namespace goes last: after it, paths
/// resolve on the host.
fn open_host_namespaces() -> anyhow::Result<Vec<(OwnedFd, CloneFlags)>> {
    let list = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    list.iter()
        .map(|(name, flag)| {
            let p = format!("/proc/1/ns/{name}");
            let f = std::fs::File::open(&p).with_context(|| {
                format!("opening {p}: the agent needs hostPID and privileges to act as the host")
            })?;
            Ok((OwnedFd::from(f), *flag))
        })
        .collect()
}
