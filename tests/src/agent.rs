//! Running the real `kwasm-agent` binary the way an operator does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::SystemTime;

/// The binary built from this workspace (target/<profile>/kwasm-agent). Test runners build the agent
/// library for the tests, not its binary: rebuild it when any of its sources is newer, so a test never
/// runs a stale agent.
pub fn agent_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let exe = std::env::current_exe().unwrap();
    // Test binaries live in <profile>/deps, the benchmark binaries in <profile>.
    let mut profile_dir = exe.parent().unwrap().to_owned();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let bin = profile_dir.join("kwasm-agent");
    let release = profile_dir.ends_with("release");
    BUILD.call_once(|| {
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent");
        if built.map(|b| newest(&sources) > b).unwrap_or(true) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "-p", "kwasm-agent", "--bin", "kwasm-agent"]);
            if release {
                build.arg("--release");
            }
            let st = build.status().unwrap();
            assert!(st.success(), "building kwasm-agent failed");
        }
    });
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p kwasm-agent` first",
        bin.display()
    );
    bin
}

fn newest(dir: &Path) -> SystemTime {
    let mut t = SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let m = if p.is_dir() {
            newest(&p)
        } else {
            e.metadata().and_then(|m| m.modified()).unwrap_or(t)
        };
        t = t.max(m);
    }
    t
}

/// A command for the agent with a clean, predictable environment (no proxy leaks from the machine).
pub fn agent(args: &[&str]) -> Command {
    let mut c = Command::new(agent_bin());
    c.args(args);
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "KWASM_CONFIG",
    ] {
        c.env_remove(v);
    }
    c.env("KWASM_LOG", "info");
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "agent failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn failed(&self) -> &Self {
        assert_ne!(
            self.code, 0,
            "agent unexpectedly succeeded:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    /// The one-line reason the CLI contract promises on failure.
    pub fn reason(&self) -> String {
        self.stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("kwasm-agent: error:"))
            .unwrap_or("")
            .to_owned()
    }
}

pub fn output(mut c: Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().expect("running kwasm-agent");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `kwasm-agent <cmd> --config <settings> --host-root <root> [extra...]`
pub fn run_cmd(cmd: &str, settings: &Path, root: &Path, extra: &[&str]) -> Run {
    let mut c = agent(&[
        cmd,
        "--config",
        settings.to_str().unwrap(),
        "--host-root",
        root.to_str().unwrap(),
    ]);
    c.args(extra);
    output(c)
}
