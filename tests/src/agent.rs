//! Running the real `kwasm-agent` binary the way an operator does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::node_host::NodeHost;
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

pub const WAIT: Duration = Duration::from_secs(60);

pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A GET on 127.0.0.1:`port` (the agents' and the catalog's health endpoints): status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let code = r.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        r.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    ))
}

pub struct RunningAgent {
    pub child: Child,
    pub port: u16,
    log: PathBuf,
}

impl RunningAgent {
    pub fn start(host: &NodeHost, kubeconfig: &std::path::Path, node: &str, port: u16) -> Self {
        Self::start_with(host, kubeconfig, node, port, &[])
    }

    /// `start` with more environment (e.g. libfaketime's, to run the agent on a skewed clock).
    pub fn start_with(
        host: &NodeHost,
        kubeconfig: &std::path::Path,
        node: &str,
        port: u16,
        env: &[(String, String)],
    ) -> Self {
        let log = host.sb.path().join(format!("agent-{node}.log"));
        let mut c = agent(&[
            "run",
            "--config",
            host.sb.settings.to_str().unwrap(),
            "--host-root",
            "/",
        ]);
        c.env("NODE_NAME", node)
            .env("KUBECONFIG", kubeconfig)
            .env("KWASM_LOG", "info,kube=warn")
            .envs(env.iter().map(|(k, v)| (k, v)));
        c.stdout(Stdio::null()).stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        );
        Self {
            child: c.spawn().unwrap(),
            port,
            log,
        }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while self.get("/readyz").filter(|(c, _)| *c == 200).is_none() {
            assert!(
                crate::containerd::alive(self.child.id() as i32),
                "the agent exited before it was ready:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the agent's /readyz on port {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as the OOM killer or a node failure would, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kwasm-agent catalog` (the catalog controller) against the API server; killed on drop.
pub struct RunningCatalog {
    pub child: Child,
    log: PathBuf,
}

impl RunningCatalog {
    pub fn start(settings: &Path, kubeconfig: &Path, pod: &str, log: PathBuf) -> Self {
        let mut c = agent(&["catalog", "--config", settings.to_str().unwrap()]);
        c.env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", pod)
            .env("POD_NAMESPACE", crate::kube_api::NAMESPACE)
            .env("KWASM_LOG", "info,kube=warn");
        c.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Self {
            child: c.spawn().unwrap(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RunningCatalog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
