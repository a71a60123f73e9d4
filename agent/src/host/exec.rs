//! Commands that must run *as the host*, two ways, and nothing else in the code knows how:
//! - `run`: commands that talk to the host's services (restarting a systemd unit, validating a config
//!   with the host's containerd). When the host root is not `/` the agent runs in a pod with hostPID,
//!   and the child joins PID 1's namespaces before exec.
//! - `run_in_root`: executing a file of the host's (a shim asked its version) with nothing of the host
//!   but its filesystem: the child changes its root to the host root, so the program's loader and
//!   libraries are the host's. systemctl refuses to work from a chroot, hence the two.

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
    root: std::path::PathBuf,
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
            root: host.root().to_owned(),
            enter_namespaces: host.root() != Path::new("/"),
        }
    }

    /// `argv[0]` is a host path; the program sees the host's filesystem as `/`.
    pub async fn run_in_root(
        &self,
        argv: &[String],
        timeout: Duration,
    ) -> anyhow::Result<ExecOutput> {
        let mut cmd = command(argv)?;
        if self.root != Path::new("/") {
            use std::os::unix::ffi::OsStrExt;
            // Built before fork: nothing may allocate between fork and exec.
            let root = std::ffi::CString::new(self.root.as_os_str().as_bytes())?;
            cmd.env("PATH", HOST_PATH);
            // SAFETY: only async-signal-safe calls (chroot, chdir) run between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        wait(cmd, argv, timeout).await
    }

    pub async fn run(&self, argv: &[String], timeout: Duration) -> anyhow::Result<ExecOutput> {
        let mut cmd = command(argv)?;
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
        wait(cmd, argv, timeout).await
    }
}

fn command(argv: &[String]) -> anyhow::Result<std::process::Command> {
    let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
}

async fn wait(
    cmd: std::process::Command,
    argv: &[String],
    timeout: Duration,
) -> anyhow::Result<ExecOutput> {
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

/// The host's namespaces: PID 1's (with hostPID), or those of `$KWASM_HOST_PID` — for test harnesses
/// on machines whose PID 1 refuses access to its namespaces. The mount namespace goes last: after it,
/// paths resolve on the host.
fn open_host_namespaces() -> anyhow::Result<Vec<(OwnedFd, CloneFlags)>> {
    let pid: u32 = match std::env::var("KWASM_HOST_PID") {
        Ok(p) => p
            .parse()
            .with_context(|| format!("KWASM_HOST_PID={p:?} is not a process ID"))?,
        Err(_) => 1,
    };
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
            let p = format!("/proc/{pid}/ns/{name}");
            let f = std::fs::File::open(&p).with_context(|| {
                format!("opening {p}: the agent needs hostPID and privileges to act as the host")
            })?;
            Ok((OwnedFd::from(f), *flag))
        })
        .collect()
}
