//! A production-like node on this machine: systemd as PID 1 of its own namespaces over an overlay of
//! `/` (tests/node/boot.sh), with one containerd release running as its distribution's
//! `containerd.service` on that release's own default config — the local pause image, and
//! `restrict_oom_score_adj` (this machine does not let containerd lower a pod's OOM score). Commands
//! run inside it through `nsenter`, as the host sees itself; its containerd's socket is reached from
//! here through `/proc/<its PID 1>/root`. Dropping it kills its PID 1 (the kernel ends everything in
//! its PID namespace), waits for that, and removes its cgroups: no process, mount or cgroup is left.
//!
//! Releases: the machine's own containerd (Debian 12's 1.6.20), and those scripts/containerd-releases.sh
//! unpacked under `$KWASM_CONTAINERD_RELEASES` (Debian 13's 1.7.24, Debian unstable's 2.1.9).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{agent_bin, Run};
use crate::containerd::PAUSE_IMAGE;
use crate::sandbox::Sandbox;

/// One containerd release: its binaries, unit file and default config.
#[derive(Debug, Clone)]
pub struct Release {
    pub version: String,
    /// Where the release's package is unpacked; None: this machine's own containerd.
    root: Option<PathBuf>,
}

const RELEASES_ENV: &str = "KWASM_CONTAINERD_RELEASES";

impl Release {
    /// The release whose version starts with `series` ("1.6", "1.7", "2.1"). None (the test skips)
    /// when it is not here — except under CI, where that is a failure.
    pub fn find(series: &str) -> Option<Release> {
        let found = Self::own()
            .into_iter()
            .chain(Self::unpacked())
            .find(|r| r.version.starts_with(&format!("{series}.")));
        if found.is_none() {
            let msg = format!(
                "no containerd {series}.x: set {RELEASES_ENV} (scripts/containerd-releases.sh prints it)"
            );
            assert!(std::env::var_os("CI").is_none(), "{msg}");
            eprintln!("skipped: {msg}");
        }
        found
    }

    fn own() -> Option<Release> {
        let v = version_of(Path::new("/usr/bin/containerd"))?;
        Some(Release {
            version: v,
            root: None,
        })
    }

    fn unpacked() -> Vec<Release> {
        let Some(dir) = std::env::var_os(RELEASES_ENV) else {
            return vec![];
        };
        let mut v: Vec<Release> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let root = e.path();
                let version = version_of(&root.join("usr/bin/containerd"))?;
                Some(Release {
                    version,
                    root: Some(root),
                })
            })
            .collect();
        v.sort_by(|a, b| a.version.cmp(&b.version));
        v
    }

    /// The release's `containerd` binary.
    pub fn binary(&self) -> PathBuf {
        self.file("/usr/bin/containerd")
    }

    fn file(&self, path: &str) -> PathBuf {
        match &self.root {
            Some(r) => r.join(path.trim_start_matches('/')),
            None => PathBuf::from(path),
        }
    }

    fn unit_file(&self) -> PathBuf {
        [
            "/usr/lib/systemd/system/containerd.service",
            "/lib/systemd/system/containerd.service",
        ]
        .iter()
        .map(|p| self.file(p))
        .find(|p| p.exists())
        .expect("the release ships containerd.service")
    }

    /// `containerd config default` of this release, as a node's config: the local pause image,
    /// `restrict_oom_score_adj`, and runc's `SystemdCgroup` as asked (AKS nodes run `true`).
    pub fn default_config(&self, systemd_cgroup: bool) -> String {
        let out = Command::new(self.file("/usr/bin/containerd"))
            .args(["config", "default"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let mut doc: toml_edit::DocumentMut =
            String::from_utf8(out.stdout).unwrap().parse().unwrap();
        let version = doc.get("version").and_then(|v| v.as_integer()).unwrap_or(1);
        let plugins = &mut doc["plugins"];
        if version >= 3 {
            plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] =
                toml_edit::value(PAUSE_IMAGE);
            let rt = &mut plugins["io.containerd.cri.v1.runtime"];
            rt["restrict_oom_score_adj"] = toml_edit::value(true);
            rt["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] =
                toml_edit::value(systemd_cgroup);
        } else {
            let cri = &mut plugins["io.containerd.grpc.v1.cri"];
            cri["sandbox_image"] = toml_edit::value(PAUSE_IMAGE);
            cri["restrict_oom_score_adj"] = toml_edit::value(true);
            cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] =
                toml_edit::value(systemd_cgroup);
        }
        doc.to_string()
    }
}

/// What `containerd --version` says: "containerd github.com/containerd/containerd 1.7.24~ds1 …".
fn version_of(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let word = text.split_whitespace().nth(2)?;
    Some(
        word.trim_start_matches('v')
            .split(['~', '+', '-'])
            .next()?
            .to_owned(),
    )
}

#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// runc's `SystemdCgroup` in the node's config.
    pub systemd_cgroup: bool,
    /// The node's config.toml instead of the release's default (a real platform's).
    pub config: Option<String>,
}

/// Units the node does not need, or that would touch what the test shares with it (tmpfiles empties
/// `/tmp`), or that this machine happens to have enabled.
const MASKED: &[&str] = &[
    "getty@tty1.service",
    "getty.target",
    "systemd-logind.service",
    "systemd-networkd.service",
    "systemd-timesyncd.service",
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-pstore.service",
    "e2scrub_reap.service",
    "postgresql.service",
    "timers.target",
];

pub struct SystemdNode {
    /// /tmp/kw.X, the same path inside the node and here.
    pub sb: Sandbox,
    pub release: Release,
    id: String,
    boot: Child,
    /// The node's PID 1 (systemd) as this machine sees it.
    pub pid: i32,
    /// runc runs with the systemd cgroup driver: pods need a slice as their cgroup parent.
    pub systemd_cgroup: bool,
}

const BOOT_WITHIN: Duration = Duration::from_secs(60);

impl SystemdNode {
    pub fn boot(release: &Release, opts: NodeOptions) -> Self {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        let sb = Sandbox::new();
        let dir = sb.path().join("node");
        let seed = dir.join("seed");
        let etc = seed.join("etc");
        std::fs::create_dir_all(etc.join("containerd")).unwrap();
        let systemd_cgroup = opts.systemd_cgroup;
        let config = match opts.config {
            Some(c) => c,
            None => release.default_config(opts.systemd_cgroup),
        };
        std::fs::write(etc.join("containerd/config.toml"), config).unwrap();
        let units = etc.join("systemd/system");
        std::fs::create_dir_all(units.join("multi-user.target.wants")).unwrap();
        std::fs::copy(release.unit_file(), units.join("containerd.service")).unwrap();
        symlink(
            "/etc/systemd/system/containerd.service",
            &units.join("multi-user.target.wants/containerd.service"),
        );
        for u in MASKED {
            symlink("/dev/null", &units.join(u));
        }
        if release.root.is_some() {
            let bin = seed.join("usr/bin");
            std::fs::create_dir_all(&bin).unwrap();
            for b in ["containerd", "containerd-shim-runc-v2", "ctr"] {
                std::fs::copy(release.file(&format!("/usr/bin/{b}")), bin.join(b)).unwrap();
            }
        }
        crate::rootfs::install_program(
            &sb.path().join("rootfs"),
            Path::new("/usr/bin/sleep"),
            Path::new("/bin/sleep"),
        );
        let id = sb
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace('.', "-");
        let log = std::fs::File::create(sb.path().join("boot.log")).unwrap();
        let boot = Command::new("/bin/sh")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("node/boot.sh"))
            .arg(&dir)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut node = Self {
            sb,
            release: release.clone(),
            id,
            pid: 0,
            boot,
            systemd_cgroup,
        };
        node.pid = node.wait_pid1();
        node.wait_running();
        node.wait_containerd();
        node
    }

    /// The child of unshare that became systemd.
    fn wait_pid1(&mut self) -> i32 {
        let deadline = Instant::now() + BOOT_WITHIN;
        loop {
            let unshare = self.boot.id();
            let child = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = child {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm == "systemd\n" {
                    return pid;
                }
            }
            if let Ok(Some(st)) = self.boot.try_wait() {
                panic!("the node did not boot ({st}): {}", self.boot_log());
            }
            assert!(Instant::now() < deadline, "no systemd: {}", self.boot_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn boot_log(&self) -> String {
        std::fs::read_to_string(self.sb.path().join("boot.log")).unwrap_or_default()
    }

    fn wait_running(&self) {
        let deadline = Instant::now() + BOOT_WITHIN;
        loop {
            let state = self.sh("systemctl is-system-running 2>&1 || true");
            match state.trim() {
                "running" => return,
                "degraded" => panic!(
                    "the node booted degraded: {}",
                    self.sh("systemctl --failed --no-legend --plain 2>&1")
                ),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "the node is {state:?}: {}",
                self.boot_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd answers on its socket and its CRI plugin reports the runtime ready.
    pub fn wait_containerd(&self) {
        let deadline = Instant::now() + BOOT_WITHIN;
        while !self.cri_ready() {
            assert!(
                Instant::now() < deadline,
                "containerd never answered: {}",
                self.journal("containerd", 20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn cri_ready(&self) -> bool {
        let Ok(mut cri) = crate::cri::Cri::try_connect(&self.socket()) else {
            return false;
        };
        cri.runtime_ready()
    }

    /// `argv` inside the node, as its host: every namespace of its PID 1, its root and directory.
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.command(argv).output().unwrap()
    }

    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.pid.to_string(),
            "-m",
            "-p",
            "-u",
            "-i",
            "-C",
            "-r",
            "-w",
            "--",
        ])
        .args(argv);
        c
    }

    /// A shell command inside the node; its stdout (stderr too when asked with 2>&1).
    pub fn sh(&self, script: &str) -> String {
        String::from_utf8_lossy(&self.exec(&["/bin/sh", "-c", script]).stdout).into_owned()
    }

    /// Like `sh`, but the command must succeed.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.exec(&["/bin/sh", "-c", script]);
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A unit property (`systemctl show -p NAME --value`).
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.sh(&format!("systemctl show -p {property} --value {unit}"))
            .trim()
            .to_owned()
    }

    /// containerd's main PID, in the node's PID namespace.
    pub fn containerd_pid(&self) -> i32 {
        self.unit_property("containerd", "MainPID").parse().unwrap()
    }

    pub fn journal(&self, unit: &str, lines: usize) -> String {
        self.sh(&format!(
            "journalctl -u {unit} -n {lines} --no-pager -o cat 2>&1"
        ))
    }

    /// A host path of the node, reached from this machine.
    pub fn path(&self, host_path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(host_path.trim_start_matches('/'))
    }

    pub fn socket(&self) -> PathBuf {
        self.path("/run/containerd/containerd.sock")
    }

    pub fn read(&self, host_path: &str) -> String {
        std::fs::read_to_string(self.path(host_path)).unwrap_or_default()
    }

    /// Every file (with its content) and directory under a host directory of the node, for
    /// byte-for-byte checks.
    pub fn snapshot(&self, host_dir: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![];
        snapshot_into(&self.path(host_dir), host_dir, &mut out);
        out.sort();
        out
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut argv = vec!["ctr", "--address", "/run/containerd/containerd.sock"];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    /// Imports OCI archives (paths under the sandbox) for CRI.
    pub fn import_images(&self, archives: &[PathBuf]) {
        for a in archives {
            let out = self.ctr(&["-n", "k8s.io", "images", "import", a.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "importing {}: {}",
                a.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// A long-running runc container started with `ctr`; its task PID (in the node's PID namespace).
    pub fn run_container(&self, id: &str) -> i32 {
        self.run_container_on(id, None)
    }

    /// `ctr run`, on `runtime` (a runtime type or a shim's path) when given, else containerd's default.
    pub fn run_container_on(&self, id: &str, runtime: Option<&str>) -> i32 {
        let rootfs = self.sb.path().join("rootfs");
        let mut args = vec!["run", "-d"];
        if let Some(r) = runtime {
            args.extend(["--runtime", r]);
        }
        args.extend([
            "--rootfs",
            rootfs.to_str().unwrap(),
            id,
            "/bin/sleep",
            "100000",
        ]);
        let out = self.ctr(&args);
        assert!(
            out.status.success(),
            "ctr run {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.task_pid(id).expect("task running")
    }

    pub fn task_pid(&self, id: &str) -> Option<i32> {
        crate::containerd::running_task_pid(&self.ctr(&["task", "ls"]), id)
    }

    /// `kwasm-agent CMD --config <sandbox>/settings.toml ARGS…` inside the node, host root `/`.
    pub fn agent(&self, cmd: &str, args: &[&str]) -> Run {
        let bin = agent_bin();
        let settings = self.sb.settings.to_str().unwrap().to_owned();
        let mut argv = vec![bin.to_str().unwrap(), cmd, "--config", &settings];
        argv.extend_from_slice(args);
        let mut c = self.command(&argv);
        c.env("KWASM_LOG", "info").env_remove("KWASM_CONFIG");
        crate::agent::output(c)
    }

    /// The agent's `status --output json`.
    pub fn status(&self) -> serde_json::Value {
        let r = self.agent("status", &["--output", "json"]);
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
    }

    /// The cgroup directories this node lives in, one per hierarchy of the machine.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        cgroup_mounts()
            .into_iter()
            .map(|m| m.join(format!("kwnode.{}", self.id)))
            .collect()
    }
}

impl Drop for SystemdNode {
    fn drop(&mut self) {
        if self.pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // unshare reaps the node's PID 1 and exits; only if the node never started is it killed.
        if self.pid <= 0 {
            let _ = self.boot.kill();
        }
        let _ = self.boot.wait();
        crate::containerd::reap_exited();
        // The kernel empties the node's cgroups as its processes die; then they can go, deepest first.
        let deadline = Instant::now() + Duration::from_secs(20);
        for cg in self.cgroups() {
            while cg.exists() && !remove_cgroup_tree(&cg) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Where this machine mounts its cgroup hierarchies.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// rmdir of a cgroup and its children (a cgroup directory holds no files that can be deleted).
fn remove_cgroup_tree(dir: &Path) -> bool {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_tree(&e.path());
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

fn snapshot_into(dir: &Path, name: &str, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = format!("{name}/{}", e.file_name().to_string_lossy());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            // A directory left behind (an empty conf.d) is a difference too.
            out.push((format!("{n}/"), vec![]));
            snapshot_into(&e.path(), &n, out);
        } else {
            out.push((n, std::fs::read(e.path()).unwrap_or_default()));
        }
    }
}

fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}
