//! The kill -9 and cycle suites: the real agent against a real containerd with a live container,
//! killed with SIGKILL at named steps (the agent's `KWASM_TEST_KILL_AT` hook) and at random moments.
//! After every kill the host must be safe as it stands — containerd accepts the config on disk, no
//! partial binary is visible under the install dir, the live container kept its PID — and the next
//! uninterrupted run must reach exactly the end state an uninterrupted run reaches.
//!
//! Long runs: `scripts/fault.sh --runs 200 --cycles 100`; a short run is part of the test suite
//! (tests/tests/faults.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::agent::{agent, Run};
use crate::archive::sha256;
use crate::containerd::pids_mentioning;
use crate::node_host::NodeHost;

/// Steps the agent marks, as `KWASM_TEST_KILL_AT` names them, and where each lands.
pub const APPLY_STEPS: &[(&str, &str)] = &[
    (
        "download",
        "after the download, before the binary is sealed and probed",
    ),
    ("install", "after the binary is installed and recorded"),
    ("links", "after links and old versions are settled"),
    (
        "validate",
        "after containerd validated the candidate config",
    ),
    ("write", "after the config swap, before the restart"),
    ("restart-permit+20", "during the restart"),
    ("restart", "during the CRI wait"),
    ("cri-wait", "after the CRI plugin listed the handler"),
];
pub const REMOVE_STEPS: &[(&str, &str)] = &[
    ("validate", "after the candidate config was validated"),
    ("write", "after the config swap, before the restart"),
    ("restart-permit+20", "during the restart"),
    ("restart", "during the CRI wait"),
    (
        "remove-binary",
        "after the binary was deleted, before the state was saved",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Apply,
    Remove,
}

impl Op {
    fn cmd(self) -> &'static str {
        match self {
            Op::Apply => "apply",
            Op::Remove => "remove",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Kill {
    At(String),
    After(Duration),
}

impl std::fmt::Display for Kill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kill::At(s) => write!(f, "at step {s}"),
            Kill::After(d) => write!(f, "after {} ms", d.as_millis()),
        }
    }
}

/// A small deterministic generator: runs are reproducible from their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A node with a live container and the end states an uninterrupted apply and remove reach.
pub struct FaultNode {
    pub n: NodeHost,
    container_pid: i32,
    applied_config: String,
    binary_sha256: String,
    /// How long an uninterrupted apply and remove take here: random kills land inside them.
    apply_takes: Duration,
    remove_takes: Duration,
}

const LIVE: &str = "live";

impl FaultNode {
    pub fn new() -> Self {
        let n = NodeHost::new();
        let container_pid = n.cd.run_container(LIVE, None);
        let t = Instant::now();
        n.agent("apply", &[]).ok();
        let apply_takes = t.elapsed();
        let applied_config = n.config();
        let t = Instant::now();
        n.agent("remove", &[]).ok();
        let remove_takes = t.elapsed();
        assert_eq!(n.config(), n.original, "the reference remove was not exact");
        let binary_sha256 = sha256(&n.shim_binary());
        Self {
            n,
            container_pid,
            applied_config,
            binary_sha256,
            apply_takes,
            remove_takes,
        }
    }

    fn takes(&self, op: Op) -> Duration {
        match op {
            Op::Apply => self.apply_takes,
            Op::Remove => self.remove_takes,
        }
    }

    /// Runs `op` and kills it as `kill` says; the run's result when it finished first.
    pub fn killed(&self, op: Op, kill: &Kill) -> Option<Run> {
        let mut c = agent(&[
            op.cmd(),
            "--config",
            self.n.sb.settings.to_str().unwrap(),
            "--host-root",
            "/",
            "--arch",
            "amd64",
        ]);
        if let Kill::At(step) = kill {
            c.env("KWASM_TEST_KILL_AT", step);
        }
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("starting the agent");
        let deadline = match kill {
            Kill::After(d) => Instant::now() + *d,
            Kill::At(_) => Instant::now() + Duration::from_secs(60),
        };
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                if st.signal() == Some(9) {
                    return None;
                }
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut stderr);
                }
                return Some(Run {
                    code: st.code().unwrap_or(-1),
                    stdout: String::new(),
                    stderr,
                });
            }
            if Instant::now() >= deadline {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The host is safe right after a kill: what the checks found wrong (empty: nothing).
    pub fn check_safe(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        // A restart the agent started goes on without it: give containerd the time it takes.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.n.cd.ctr(&["version"]).status.success() {
            if Instant::now() > deadline {
                wrong.push(format!(
                    "containerd did not come back: {}",
                    self.n.cd.log_tail()
                ));
                return wrong;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let dump = Command::new("containerd")
            .arg("--config")
            .arg(&self.n.cd.config)
            .args(["config", "dump"])
            .output()
            .unwrap();
        if !dump.status.success() {
            wrong.push(format!(
                "containerd refuses the config on disk: {}",
                String::from_utf8_lossy(&dump.stderr)
            ));
        }
        match self.n.cd.task_pid(LIVE) {
            Some(pid) if pid == self.container_pid => {}
            other => wrong.push(format!(
                "the live container's PID is {other:?}, was {}",
                self.container_pid
            )),
        }
        wrong.extend(self.partial_binaries());
        wrong
    }

    /// Every binary containerd could be pointed at is whole: bin/ holds only links to complete
    /// versions, and each version file has the digest its directory names.
    fn partial_binaries(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        let install = self.n.sb.path().join("opt/kwasm");
        for e in list(&install.join("bin")) {
            match std::fs::read(&e) {
                Ok(bytes) if sha256(&bytes) == self.binary_sha256 => {}
                Ok(_) => wrong.push(format!("{} is not the complete binary", e.display())),
                Err(err) => {
                    // A link whose version is gone is never in the config (checked by convergence);
                    // a dangling link is still not a partial binary, but say so.
                    if std::fs::symlink_metadata(&e).is_ok() && !e.exists() {
                        continue;
                    }
                    wrong.push(format!("{}: {err}", e.display()));
                }
            }
        }
        for dir in list(&install.join("versions")) {
            for f in list(&dir) {
                let id = dir.file_name().unwrap().to_string_lossy().into_owned();
                match std::fs::read(&f) {
                    Ok(bytes) if sha256(&bytes).starts_with(&id) => {}
                    _ => wrong.push(format!("{} does not have the digest {id}", f.display())),
                }
            }
        }
        wrong
    }

    /// The uninterrupted run after a kill reaches exactly the reference end state of `op`.
    pub fn check_converges(&self, op: Op) -> Vec<String> {
        let mut wrong = Vec::new();
        let r = self.n.agent(op.cmd(), &[]);
        if r.code != 0 {
            wrong.push(format!("the next {} failed: {}", op.cmd(), r.reason()));
            return wrong;
        }
        let install = self.n.sb.path().join("opt/kwasm");
        match op {
            Op::Apply => {
                if self.n.config() != self.applied_config {
                    wrong.push("config differs from an uninterrupted apply's".into());
                }
                match std::fs::read(self.n.binary()) {
                    Ok(b) if sha256(&b) == self.binary_sha256 => {}
                    _ => wrong.push("the installed binary is not the shim".into()),
                }
                if self.n.status()["shims"][0]["loaded"] != true {
                    wrong.push("containerd does not list the handler".into());
                }
            }
            Op::Remove => {
                if self.n.config() != self.n.original {
                    wrong.push("config not byte-identical to the original".into());
                }
                let left: Vec<PathBuf> = list(&install.join("bin"))
                    .into_iter()
                    .chain(list(&install.join("versions")))
                    .chain(list(&install.join("cache/staging")))
                    .chain(Some(install.join("state.json")).filter(|p| p.exists()))
                    .collect();
                if !left.is_empty() {
                    wrong.push(format!("left behind: {left:?}"));
                }
            }
        }
        if self.n.cd.task_pid(LIVE) != Some(self.container_pid) {
            wrong.push("the live container was disturbed".into());
        }
        wrong
    }

    /// Agent processes still running (there must be none between runs).
    pub fn leaked_agents(&self) -> Vec<i32> {
        pids_mentioning(self.n.sb.settings.to_str().unwrap())
    }
}

impl Default for FaultNode {
    fn default() -> Self {
        Self::new()
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// One line per run, and every problem found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub runs: usize,
    pub killed: usize,
    pub finished_first: usize,
    pub problems: Vec<String>,
}

/// `runs` kill -9 runs: every named step of both operations first, then random moments. `progress`
/// gets one line per run.
pub fn kill_suite(runs: usize, seed: u64, mut progress: impl FnMut(&str)) -> Outcome {
    let node = FaultNode::new();
    let mut rng = Rng::new(seed);
    let mut out = Outcome::default();
    let mut named_apply = APPLY_STEPS.iter().map(|(s, _)| *s);
    let mut named_remove = REMOVE_STEPS.iter().map(|(s, _)| *s);
    // The node alternates between applied and removed: each run kills one operation, then runs it
    // again uninterrupted.
    let mut op = Op::Apply;
    for i in 0..runs {
        let kill = match op {
            Op::Apply => named_apply.next().map(|s| Kill::At(s.into())),
            Op::Remove => named_remove.next().map(|s| Kill::At(s.into())),
        }
        .unwrap_or_else(|| {
            let span = node.takes(op).as_millis() as u64;
            Kill::After(Duration::from_millis(rng.below(span)))
        });
        let result = node.killed(op, &kill);
        out.runs += 1;
        match &result {
            None => out.killed += 1,
            Some(_) => out.finished_first += 1,
        }
        let mut wrong = node.check_safe();
        if let Some(r) = &result {
            if r.code != 0 {
                wrong.push(format!("the run finished with an error: {}", r.reason()));
            }
        }
        wrong.extend(node.check_converges(op));
        let leaked = node.leaked_agents();
        if !leaked.is_empty() {
            wrong.push(format!("agent processes left: {leaked:?}"));
        }
        progress(&format!(
            "run {:>3}: {:<6} killed {:<22} {}",
            i + 1,
            op.cmd(),
            match &result {
                None => kill.to_string(),
                Some(_) => format!("(finished before {kill})"),
            },
            if wrong.is_empty() {
                "ok".to_owned()
            } else {
                wrong.join("; ")
            }
        ));
        for w in wrong {
            out.problems
                .push(format!("run {} ({} {kill}): {w}", i + 1, op.cmd()));
        }
        op = match op {
            Op::Apply => Op::Remove,
            Op::Remove => Op::Apply,
        };
    }
    out
}

/// `cycles` apply/remove cycles with live containers: none disturbed, the config byte-identical at
/// the end, no file or process left behind.
pub fn cycle_suite(cycles: usize, mut progress: impl FnMut(&str)) -> Outcome {
    let node = FaultNode::new();
    let second = node.n.cd.run_container("second-live", None);
    let mut out = Outcome::default();
    for i in 0..cycles {
        let mut wrong = node.check_converges(Op::Apply);
        wrong.extend(node.check_converges(Op::Remove));
        if node.n.cd.task_pid("second-live") != Some(second) {
            wrong.push("the second live container was disturbed".into());
        }
        out.runs += 1;
        progress(&format!(
            "cycle {:>3}: {}",
            i + 1,
            if wrong.is_empty() {
                "ok".to_owned()
            } else {
                wrong.join("; ")
            }
        ));
        out.problems
            .extend(wrong.into_iter().map(|w| format!("cycle {}: {w}", i + 1)));
    }
    let install = node.n.sb.path().join("opt/kwasm");
    let files = all_files(&install);
    let expected_only_cache = files
        .iter()
        .all(|p| p.starts_with(install.join("cache/sha256")) || p.ends_with("lock"));
    if !expected_only_cache {
        out.problems.push(format!(
            "files left under the install dir besides the download cache: {files:?}"
        ));
    }
    let leaked = node.leaked_agents();
    if !leaked.is_empty() {
        out.problems
            .push(format!("agent processes left: {leaked:?}"));
    }
    out
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for p in list(dir) {
        if p.is_dir() && !p.is_symlink() {
            v.extend(all_files(&p));
        } else {
            v.push(p);
        }
    }
    v
}
