//! Production nodes for real: systemd as PID 1 with containerd 1.6, 1.7 and 2.x as the distribution's
//! `containerd.service` on its own default config (tests/src/systemd_node.rs), and the agent with the
//! settings the chart renders by default — restart `systemd`; config, socket, unit and binary `auto` —
//! run inside the node as its host sees itself, installing the WebAssembly test shim.
//!
//! Needs KWASM_WASM_SHIM_ARCHIVE (scripts/build-wasm-shim.sh) and KWASM_CONTAINERD_RELEASES
//! (scripts/containerd-releases.sh); scripts/test.sh sets both. Skipped without them, except under CI.

use std::time::{Duration, Instant};

use kwasm_tests::archive::sha256;
use kwasm_tests::artifact_server::{ArtifactServer, Behavior};
use kwasm_tests::built::{image_archive, wasm_shim_archive};
use kwasm_tests::cri::{Container, Cri};
use kwasm_tests::daemonset::RenderedAgent;
use kwasm_tests::kube_api::{free_port, KubeApi};
use kwasm_tests::node_host::{TestShim, SHIM_BIN};
use kwasm_tests::sandbox::ShimSpec;
use kwasm_tests::systemd_node::{NodeOptions, Release, SystemdNode};
use kwasm_tests::workloads::{self, EXIT42_WASM, HELLO_LINE, HELLO_NATIVE, HELLO_WASM};

const HANDLER: &str = "wasmtime";
const BIN: &str = "containerd-shim-wasmtime-v1";
const WITHIN: Duration = Duration::from_secs(30);

/// A node of `series` serving `shim`, with the default settings written; None: skipped.
struct Fixture {
    node: SystemdNode,
    _server: ArtifactServer,
}

fn fixture(series: &str, opts: NodeOptions, shim: Option<TestShim>) -> Option<Fixture> {
    let release = Release::find(series)?;
    let shim = shim?;
    let node = SystemdNode::boot(&release, opts);
    let server = ArtifactServer::start();
    let route = format!("/{}.tar.gz", shim.name);
    server.route(&route, vec![Behavior::Serve(shim.archive.clone())]);
    node.sb
        .write_settings(&default_settings(&server, &route, &shim));
    let work = node.sb.path().join("images");
    let images: Vec<_> = workloads::build_all(&work)
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    node.import_images(&images);
    Some(Fixture {
        node,
        _server: server,
    })
}

/// The WebAssembly test shim (runwasi's containerd-shim-wasm with wasmtime).
fn wasm_shim() -> Option<TestShim> {
    Some(TestShim {
        name: HANDLER.into(),
        binary: BIN.into(),
        runtime_type: "io.containerd.wasmtime.v1".into(),
        archive: wasm_shim_archive()?,
    })
}

/// The chart's defaults, as the host sees itself (root `/`): nothing about containerd is set, so
/// restart is `systemd` and config, socket, unit and binary are `auto`. Only the shim is the test's,
/// served over loopback HTTP with its digest pinned.
fn default_settings(server: &ArtifactServer, route: &str, shim: &TestShim) -> String {
    let mut spec = ShimSpec::new(&shim.name, &shim.binary).platform(
        "amd64",
        &server.url(route),
        Some(&sha256(&shim.archive)),
    );
    spec.runtime_type = shim.runtime_type.clone();
    format!(
        "[host]\nroot = \"/\"\n\n[artifacts]\nallow_http = true\n\n{}",
        spec.to_toml()
    )
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_node_harness_boots_each_release_under_systemd_and_leaves_nothing_behind() {
    for (series, config_version) in [("1.6", 2), ("1.7", 2), ("2.1", 3)] {
        let Some(release) = Release::find(series) else {
            continue;
        };
        let node = SystemdNode::boot(&release, NodeOptions::default());
        let said = node.sh_ok("containerd --version");
        assert!(said.contains(&format!(" {series}.")), "{said}");
        assert_eq!(node.unit_property("containerd", "ActiveState"), "active");
        assert_eq!(node.unit_property("containerd", "KillMode"), "process");
        let config = node.read("/etc/containerd/config.toml");
        assert!(
            config.starts_with(&format!("version = {config_version}"))
                || config.contains(&format!("\nversion = {config_version}\n")),
            "{config}"
        );
        let pid = node.run_container("harness");
        assert!(node.task_pid("harness") == Some(pid));
        let dir = node.sb.path().to_owned();
        let cgroups = node.cgroups();
        let pid1 = node.pid;
        assert!(cgroups.iter().all(|c| c.exists()));
        drop(node);
        assert!(!std::path::Path::new(&format!("/proc/{pid1}")).exists());
        for c in &cgroups {
            assert!(!c.exists(), "{} left behind", c.display());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(dir.to_str().unwrap()) && !mounts.contains("kwnode"),
            "{mounts}"
        );
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// apply with the defaults, a WASI pod through CRI, remove: on one release.
fn defaults_on(series: &str, systemd_cgroup: bool) {
    let opts = NodeOptions {
        systemd_cgroup,
        config: None,
    };
    let Some(f) = fixture(series, opts, wasm_shim()) else {
        return;
    };
    let n = &f.node;
    let etc_before = n.snapshot("/etc/containerd");
    let runc_pid = n.run_container("before");

    apply_restarts_through_systemd(n, runc_pid);
    let written = runtime_as_written(n, series);
    if series != "1.6" {
        // 1.7 and 2.x hand the options table to the shim as its config body: the pods below run only
        // if runwasi's shim accepted it (it refuses a body without SystemdCgroup).
        assert!(
            written.contains(&format!("SystemdCgroup = {systemd_cgroup}")),
            "{written}"
        );
    }
    let mut cri = Cri::connect(&n.socket());
    cri.systemd_cgroups = systemd_cgroup;
    let driver = if systemd_cgroup {
        "systemd"
    } else {
        "cgroupfs"
    };
    let pod = wasi_pods_run(n, &mut cri, driver);
    runc_pod_runs(n, &mut cri, driver);

    // The pod's shim runs the installed binary: remove must leave it alone.
    let r = n.agent("remove", &[]);
    r.failed();
    assert!(r.reason().contains("wasmtime is in use"), "{}", r.reason());
    cri.remove_pod(&pod).unwrap();
    eventually("the pod's shim to exit", || {
        !n.sh("ps -eo args").contains(BIN)
    });
    let main_pid = n.containerd_pid();
    n.agent("remove", &[]).ok();
    assert_ne!(
        n.containerd_pid(),
        main_pid,
        "remove did not restart containerd"
    );
    assert_eq!(n.unit_property("containerd", "ActiveState"), "active");
    assert_eq!(
        n.snapshot("/etc/containerd"),
        etc_before,
        "the config directory is not as it was"
    );
    assert!(!n.path("/opt/kwasm/bin").join(BIN).exists());
    assert_eq!(
        n.task_pid("before"),
        Some(runc_pid),
        "the runc container was disturbed"
    );
}

/// `apply` with the defaults: systemd restarted containerd (a new MainPID, the unit active), the runc
/// container kept its PID, and `status` says the handler is loaded.
fn apply_restarts_through_systemd(n: &SystemdNode, runc_pid: i32) {
    let main_pid = n.containerd_pid();
    n.agent("apply", &[]).ok();
    assert_ne!(
        n.containerd_pid(),
        main_pid,
        "systemd did not restart containerd"
    );
    assert_eq!(n.unit_property("containerd", "ActiveState"), "active");
    assert_eq!(
        n.task_pid("before"),
        Some(runc_pid),
        "the runc container was disturbed"
    );
    let st = n.status();
    assert_eq!(st["shims"][0]["loaded"], true, "{st}");
    assert_eq!(st["containerd"]["unit"], "containerd", "{st}");
}

/// The runtime table as the agent wrote it: in config.toml on 1.x; on 2.x in a drop-in the config
/// imports, which containerd merged (`config dump`).
fn runtime_as_written(n: &SystemdNode, series: &str) -> String {
    let written = if series.starts_with("1.") {
        n.read("/etc/containerd/config.toml")
    } else {
        let dump = n.sh_ok("containerd config dump");
        assert!(dump.contains("runtimes.wasmtime]"), "{dump}");
        n.read("/etc/containerd/conf.d/99-kwasm.toml")
    };
    assert!(written.contains("runtimes.wasmtime]"), "{written}");
    written
}

/// Which cgroup driver containerd's path for a container's runtime implies.
fn driver_of(cgroups_path: &str) -> &'static str {
    if cgroups_path.contains(":cri-containerd:") {
        "systemd"
    } else {
        "cgroupfs"
    }
}

/// WASI modules in a pod on the handler: output, argument, environment, the exit code, under the
/// node's cgroup driver. Returns the pod, still there (its shim running).
fn wasi_pods_run(n: &SystemdNode, cri: &mut Cri, driver: &str) -> kwasm_tests::cri::Pod {
    let pod = cri
        .run_pod("wasm-on-systemd", HANDLER, &n.sb.path().join("pod-logs"))
        .expect("a pod sandbox on the wasmtime handler");
    let mut hello = Container::new("hello", HELLO_WASM);
    hello.args = vec!["from-the-pod-spec"];
    hello.env = vec![("GREETING", "hej".into())];
    let id = cri
        .start(&pod, &hello)
        .unwrap_or_else(|e| panic!("{e:#}\njournal:\n{}", n.journal("containerd", 60)));
    let exited = cri.wait_exited(&pod, "hello", &id, WITHIN);
    assert_eq!(exited.exit_code, 0, "{exited:?}");
    assert_eq!(
        exited.log,
        format!("{HELLO_LINE}\narg: from-the-pod-spec\nenv: GREETING=hej\n")
    );
    let path = cri.cgroups_path(&id);
    assert_eq!(driver_of(&path), driver, "{path}");
    let id = cri
        .start(&pod, &Container::new("exit42", EXIT42_WASM))
        .unwrap();
    let exited = cri.wait_exited(&pod, "exit42", &id, WITHIN);
    assert_eq!(exited.exit_code, 42, "{exited:?}");
    pod
}

/// A runc pod beside the WASI one, under the same cgroup driver.
fn runc_pod_runs(n: &SystemdNode, cri: &mut Cri, driver: &str) {
    let pod = cri
        .run_pod("runc-on-systemd", "runc", &n.sb.path().join("pod-logs"))
        .expect("a runc pod sandbox");
    let id = cri
        .start(&pod, &Container::new("hello", HELLO_NATIVE))
        .unwrap();
    let exited = cri.wait_exited(&pod, "hello", &id, WITHIN);
    assert_eq!(exited.exit_code, 0, "{exited:?}");
    assert!(exited.log.starts_with(HELLO_LINE), "{exited:?}");
    let path = cri.cgroups_path(&id);
    assert_eq!(driver_of(&path), driver, "{path}");
    cri.remove_pod(&pod).unwrap();
}

/// AKS's config (tests/configs) as the node's config.toml, adapted to this machine only where it
/// must be: `restrict_oom_score_adj` (no CAP_SYS_RESOURCE here) and the metrics listener on loopback
/// port 0 (the nodes share this machine's network; AKS's 0.0.0.0:10257 would clash between nodes).
fn aks_node_config(file: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(file);
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(p).unwrap().parse().unwrap();
    let plugins = doc["plugins"].as_table_mut().unwrap();
    let cri = if plugins.contains_key("io.containerd.grpc.v1.cri") {
        "io.containerd.grpc.v1.cri"
    } else {
        "io.containerd.cri.v1.runtime"
    };
    plugins[cri]["restrict_oom_score_adj"] = toml_edit::value(true);
    doc["metrics"]["address"] = toml_edit::value("127.0.0.1:0");
    doc.to_string()
}

/// A CRI connection to the node that makes pods as its kubelet would (a systemd slice as cgroup
/// parent where runc runs the systemd driver).
fn node_cri(n: &SystemdNode) -> Cri {
    let mut cri = Cri::connect(&n.socket());
    cri.systemd_cgroups = n.systemd_cgroup;
    cri
}

/// What an AKS node image has that this machine's packages put elsewhere: AKS's pinned pause image
/// (the test's, under AKS's name) and runc at /usr/bin/runc (Debian's is in /usr/sbin).
fn as_on_aks(n: &SystemdNode) {
    let tag = n.ctr(&[
        "-n",
        "k8s.io",
        "images",
        "tag",
        kwasm_tests::containerd::PAUSE_IMAGE,
        "mcr.microsoft.com/oss/kubernetes/pause:3.6",
    ]);
    assert!(
        tag.status.success(),
        "{}",
        String::from_utf8_lossy(&tag.stderr)
    );
    n.sh_ok("[ -e /usr/bin/runc ] || ln -s /usr/sbin/runc /usr/bin/runc");
}

/// containerd's effective config on the node, without `imports` (plumbing) and with the agent's
/// runtime taken out and returned.
fn dump_without(n: &SystemdNode, handler: &str) -> (toml::Table, Option<toml::Value>) {
    let mut dump: toml::Table = n.sh_ok("containerd config dump").parse().unwrap();
    dump.remove("imports");
    let plugins = dump["plugins"].as_table_mut().unwrap();
    let cri = ["io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"]
        .into_iter()
        .find(|p| plugins.contains_key(*p))
        .unwrap();
    let ours = plugins[cri]["containerd"]["runtimes"]
        .as_table_mut()
        .unwrap()
        .remove(handler);
    (dump, ours)
}

/// An AKS node image's config with the chart's default settings: apply, a WASI pod through CRI under
/// a systemd slice (AKS's kubelet runs the systemd cgroup driver), every setting AKS made still in
/// containerd's effective config, a running container undisturbed, remove gives every file back.
fn aks_config_on(series: &str, file: &str) {
    let opts = NodeOptions {
        systemd_cgroup: true,
        config: Some(aks_node_config(file)),
    };
    let Some(f) = fixture(series, opts, wasm_shim()) else {
        return;
    };
    let n = &f.node;
    as_on_aks(n);
    let etc_before = n.snapshot("/etc/containerd");
    let (effective_before, none) = dump_without(n, HANDLER);
    assert!(none.is_none());
    let runc_pid = n.run_container("before");

    apply_restarts_through_systemd(n, runc_pid);
    let (effective_after, ours) = dump_without(n, HANDLER);
    let ours = ours.expect("containerd's effective config lists the wasmtime runtime");
    assert_eq!(
        ours["options"]["SystemdCgroup"].as_bool(),
        Some(true),
        "{ours}"
    );
    assert_eq!(
        effective_after, effective_before,
        "a setting AKS made changed in containerd's effective config"
    );
    let mut cri = node_cri(n);
    let pod = wasi_pods_run(n, &mut cri, "systemd");
    cri.remove_pod(&pod).unwrap();
    eventually("the pod's shim to exit", || {
        !n.sh("ps -eo args").contains(BIN)
    });
    n.agent("remove", &[]).ok();
    assert_eq!(n.snapshot("/etc/containerd"), etc_before);
    assert_eq!(dump_without(n, HANDLER).0, effective_before);
    assert_eq!(n.task_pid("before"), Some(runc_pid));
}

#[test]
fn aks_ubuntu2204_config_on_containerd_1_7() {
    aks_config_on("1.7", "aks-ubuntu2204-containerd17.toml");
}

#[test]
fn aks_azurelinux3_config_on_containerd_2_1() {
    aks_config_on("2.1", "aks-azurelinux3-containerd2.toml");
}

#[test]
fn aks_gpu_pool_config_on_containerd_2_1() {
    aks_config_on("2.1", "aks-azurelinux3-containerd2-gpu.toml");
}

#[test]
fn aks_kata_pool_config_on_containerd_2_1() {
    aks_config_on("2.1", "aks-azurelinux3-containerd2-kata.toml");
}

#[test]
fn defaults_on_containerd_1_6_under_systemd() {
    defaults_on("1.6", false);
}

#[test]
fn defaults_on_containerd_1_7_under_systemd() {
    defaults_on("1.7", false);
}

#[test]
fn defaults_on_containerd_1_7_with_the_systemd_cgroup_driver() {
    defaults_on("1.7", true);
}

#[test]
fn defaults_on_containerd_2_1_under_systemd() {
    defaults_on("2.1", false);
}

#[test]
fn defaults_on_containerd_2_1_with_the_systemd_cgroup_driver() {
    defaults_on("2.1", true);
}

/// A drop-in for containerd.service, then `systemctl daemon-reload`.
fn drop_in(n: &SystemdNode, name: &str, body: &str) {
    n.sh_ok(&format!(
        "mkdir -p /etc/systemd/system/containerd.service.d && printf '%s' '{body}' > /etc/systemd/system/containerd.service.d/{name}.conf && systemctl daemon-reload"
    ));
}

/// `containerd.restart = "dbus"` (and `in_use`, when given) in the node's settings.
fn restart_over_dbus(n: &SystemdNode, in_use: Option<&str>) {
    let settings = std::fs::read_to_string(&n.sb.settings).unwrap();
    let mut table = "[containerd]\nrestart = \"dbus\"\n".to_owned();
    if let Some(how) = in_use {
        table.push_str(&format!("in_use = \"{how}\"\n"));
    }
    let at = settings.find("[[shims]]").expect("a shim in the settings");
    let written = format!("{}{table}\n{}", &settings[..at], &settings[at..]);
    n.sb.write_settings(&written);
}

#[test]
fn a_unit_whose_restart_would_kill_containers_is_refused_before_anything_is_written() {
    for (mode, dbus) in [
        ("mixed", false),
        ("control-group", false),
        ("mixed", true),
        ("control-group", true),
    ] {
        let Some(f) = fixture("1.7", NodeOptions::default(), Some(TestShim::kwtest())) else {
            return;
        };
        let n = &f.node;
        if dbus {
            restart_over_dbus(n, None);
        }
        drop_in(n, "kill-mode", &format!("[Service]\nKillMode={mode}\n"));
        assert_eq!(n.unit_property("containerd", "KillMode"), mode);
        let etc_before = n.snapshot("/etc/containerd");
        let runc_pid = n.run_container("before");
        let main_pid = n.containerd_pid();
        let r = n.agent("apply", &[]);
        r.failed();
        assert!(
            r.reason().contains(&format!("KillMode={mode}"))
                && r.reason().contains("kill every running container"),
            "{}",
            r.reason()
        );
        assert_eq!(n.snapshot("/etc/containerd"), etc_before);
        assert!(
            !n.path("/opt/kwasm/bin").join(SHIM_BIN).exists(),
            "a binary was installed"
        );
        assert_eq!(n.containerd_pid(), main_pid, "containerd was restarted");
        assert_eq!(n.task_pid("before"), Some(runc_pid));
    }
}

#[test]
fn containerd_that_does_not_come_back_under_systemd_is_rolled_back() {
    rolled_back(false);
}

#[test]
fn containerd_that_does_not_come_back_after_a_dbus_restart_is_rolled_back() {
    rolled_back(true);
}

fn rolled_back(dbus: bool) {
    let Some(f) = fixture("2.1", NodeOptions::default(), Some(TestShim::kwtest())) else {
        return;
    };
    let n = &f.node;
    if dbus {
        restart_over_dbus(n, None);
    }
    // The node refuses to start containerd while a wasmtime runtime is configured.
    drop_in(
        n,
        "refuse-wasmtime",
        "[Service]\nExecStartPre=/bin/sh -c \"! grep -rqs runtimes.kwtest /etc/containerd || { echo node policy: no kwtest runtime here >&2; exit 1; }\"\n",
    );
    let etc_before = n.snapshot("/etc/containerd");
    let runc_pid = n.run_container("before");
    let r = n.agent("apply", &[]);
    r.failed();
    let reason = r.reason();
    assert!(reason.contains("previous config was restored"), "{reason}");
    assert!(
        reason.contains("node policy: no kwtest runtime here"),
        "the error does not quote the journal: {reason}\n{}",
        r.stderr
    );
    assert_eq!(n.unit_property("containerd", "ActiveState"), "active");
    assert_eq!(n.snapshot("/etc/containerd"), etc_before);
    assert!(
        !n.path("/opt/kwasm/bin").join(SHIM_BIN).exists(),
        "the new binary stayed"
    );
    assert_eq!(n.task_pid("before"), Some(runc_pid));
    n.wait_containerd();
}

#[test]
fn ten_apply_remove_cycles_never_leave_the_unit_failed() {
    let Some(f) = fixture("1.7", NodeOptions::default(), Some(TestShim::kwtest())) else {
        return;
    };
    let n = &f.node;
    let etc_before = n.snapshot("/etc/containerd");
    let runc_pid = n.run_container("before");
    let mut resets = 0;
    for i in 0..10 {
        for cmd in ["apply", "remove"] {
            let r = n.agent(cmd, &[]);
            r.ok();
            resets += r.stderr.matches("start rate limit").count();
            assert_eq!(
                n.unit_property("containerd", "ActiveState"),
                "active",
                "{cmd} {i}"
            );
        }
    }
    eprintln!("the agent reset systemd's start rate limit {resets} times in 20 restarts");
    assert_eq!(n.snapshot("/etc/containerd"), etc_before);
    assert_eq!(n.task_pid("before"), Some(runc_pid));
    // 20 restarts in well under a minute: past systemd's default limit of 5 starts in 10 s, which the
    // agent met and reset.
    assert_eq!(n.unit_property("containerd", "NRestarts"), "0");
}

/// `restart = "dbus"` and the in-use answer from containerd's API, the agent an ordinary process of
/// the node: restarted through D-Bus (new MainPID, containers keep theirs), remove refused while a
/// container runs on the shim (named), then everything back byte for byte.
fn over_dbus_on(series: &str) {
    let Some(f) = fixture(series, NodeOptions::default(), Some(TestShim::kwtest())) else {
        return;
    };
    let n = &f.node;
    restart_over_dbus(n, Some("containerd"));
    let etc_before = n.snapshot("/etc/containerd");
    let runc_pid = n.run_container("before");
    let main_pid = n.containerd_pid();
    let r = n.agent("apply", &[]);
    r.ok();
    assert!(r.stdout.contains("over D-Bus"), "{}", r.stdout);
    assert_ne!(n.containerd_pid(), main_pid, "containerd was not restarted");
    assert_eq!(n.unit_property("containerd", "ActiveState"), "active");
    assert_eq!(n.task_pid("before"), Some(runc_pid));
    assert_eq!(n.status()["shims"][0]["loaded"], true);

    // A container naming the shim by its path (as `ctr run --runtime` does) keeps it installed.
    let shim = format!("/opt/kwasm/bin/{SHIM_BIN}");
    let busy_pid = n.run_container_on("busy", Some(&shim));
    let r = n.agent("remove", &[]);
    r.failed();
    assert!(
        r.reason()
            .contains("kwtest is in use by 1 running container(s)")
            && r.reason().contains("container default/busy"),
        "{}",
        r.reason()
    );
    assert!(n.path("/opt/kwasm/bin").join(SHIM_BIN).exists());
    assert_eq!(n.task_pid("busy"), Some(busy_pid));
    n.ctr(&["task", "kill", "-s", "SIGKILL", "busy"]);
    eventually("the busy container to stop", || {
        n.task_pid("busy").is_none()
    });

    let main_pid = n.containerd_pid();
    n.agent("remove", &[]).ok();
    assert_ne!(
        n.containerd_pid(),
        main_pid,
        "remove did not restart containerd"
    );
    assert_eq!(n.snapshot("/etc/containerd"), etc_before);
    assert!(!n.path("/opt/kwasm/bin").join(SHIM_BIN).exists());
    assert_eq!(n.task_pid("before"), Some(runc_pid));
}

#[test]
fn over_dbus_on_containerd_1_7() {
    over_dbus_on("1.7");
}

#[test]
fn over_dbus_on_containerd_2_1() {
    over_dbus_on("2.1");
}

/// The two ways the chart runs the agent (`securityMode`), each as rendered into manifests/deploy/.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Privileged,
    Restricted,
}

impl Mode {
    fn manifest(self) -> &'static str {
        match self {
            Mode::Privileged => "kwasm-agent.yaml",
            Mode::Restricted => "kwasm-agent-restricted.yaml",
        }
    }

    fn restart(self) -> &'static str {
        match self {
            Mode::Privileged => "systemd",
            Mode::Restricted => "dbus",
        }
    }
}

/// The agent's image run as the DaemonSet's pod is run in `mode` — the security context, host
/// namespaces, mounts and settings the chart renders, translated as the kubelet does — on a node of
/// `series`: `kubectl annotate` provisions it (containerd restarted, its containers and the agent's
/// own keep their PIDs), a WASI pod runs on the handler, removal waits while that pod is there and
/// then leaves /etc/containerd byte-identical, and a unit whose restart would kill containers is
/// refused with nothing written.
/// `aks`: the node runs that AKS config (tests/configs) instead of the release's default.
fn the_daemonset_pod_on(series: &str, mode: Mode, aks: Option<&str>) {
    let Some(archive) = image_archive() else {
        return;
    };
    let opts = match aks {
        Some(file) => NodeOptions {
            systemd_cgroup: true,
            config: Some(aks_node_config(file)),
        },
        None => NodeOptions::default(),
    };
    let Some(f) = fixture(series, opts, wasm_shim()) else {
        return;
    };
    let n = &f.node;
    if aks.is_some() {
        as_on_aks(n);
    }
    let rendered = RenderedAgent::load(mode.manifest());
    assert_eq!(rendered.host_pid, mode == Mode::Privileged);
    let api = KubeApi::start(n.sb.path());
    api.add_node("n1", "amd64");
    let etc = daemonset_config(n, &api, &rendered, mode);
    n.import_images(&[archive]);
    let image = agent_image(n);

    let etc_before = n.snapshot("/etc/containerd");
    let runc_pid = n.run_container("before");
    let mut cri = node_cri(n);
    let rro = cri.recursive_read_only("runc");
    let pod = start_daemonset_pod(n, &mut cri, &image, &etc, &rendered, rro);
    let agent_pid = cri.container_pid(&pod.agent);
    if mode == Mode::Restricted {
        assert_confined(n, agent_pid, &rendered, rro);
    }
    drop(cri);
    let mut cri = provisioned_on_annotate(n, &api, &pod, (agent_pid, runc_pid), mode);
    let wasm = wasi_pod_ran(n, &mut cri);
    removal_waits_for(n, &api, &pod, &wasm);
    let main_pid = n.containerd_pid();
    cri.remove_pod(&wasm).unwrap();
    drop(cri);
    let mut cri = cleaned_once_gone(n, &api, &pod, &etc_before, main_pid, (agent_pid, runc_pid));
    kill_mode_refused(n, &api, &pod, &etc_before);

    assert_eq!(cri.container_pid(&pod.agent), agent_pid);
    assert_eq!(n.task_pid("before"), Some(runc_pid));
}

/// `kubectl annotate` → the node provisioned: containerd restarted (how, by `mode`), the agent's own
/// container and the runc container keep their PIDs (`pids`), the shim's label true. Returns a CRI
/// connection made after the restart.
fn provisioned_on_annotate(
    n: &SystemdNode,
    api: &KubeApi,
    pod: &AgentPod,
    (agent_pid, runc_pid): (i64, i32),
    mode: Mode,
) -> Cri {
    let main_pid = n.containerd_pid();
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    pod.wait_for(n, "the containerized agent to provision the node", || {
        api.provisioned_label("n1").as_deref() == Some("true")
    });
    // containerd restarted: the connection to its socket did not survive that, the pods did.
    let mut cri = node_cri(n);
    assert_ne!(n.containerd_pid(), main_pid, "containerd was not restarted");
    assert_eq!(n.unit_property("containerd", "ActiveState"), "active");
    assert_eq!(
        cri.container_pid(&pod.agent),
        agent_pid,
        "the agent's own container did not survive"
    );
    assert_eq!(n.task_pid("before"), Some(runc_pid));
    assert_eq!(
        api.node("n1")["metadata"]["labels"]["kwasm.sh/shim.wasmtime"],
        "true"
    );
    let log = pod.pod.log("agent");
    assert_eq!(
        log.contains("over D-Bus"),
        mode == Mode::Restricted,
        "{log}"
    );
    cri
}

/// The trigger went while the WASI pod ran; once that pod is gone (just now) the node is clean
/// again, byte for byte, containerd (`main_pid` before) restarted, and the containers (`pids`) kept
/// theirs. Returns a CRI connection made after
/// the restart.
fn cleaned_once_gone(
    n: &SystemdNode,
    api: &KubeApi,
    pod: &AgentPod,
    etc_before: &[(String, Vec<u8>)],
    main_pid: i32,
    (agent_pid, runc_pid): (i64, i32),
) -> Cri {
    pod.wait_for(n, "the node to be cleaned", || {
        api.node("n1")["metadata"]["labels"]
            .get("kwasm.sh/kwasm-provisioned")
            .is_none()
    });
    assert_eq!(n.snapshot("/etc/containerd"), etc_before);
    assert!(!n.path("/opt/kwasm/bin").join(BIN).exists());
    assert_ne!(
        n.containerd_pid(),
        main_pid,
        "remove did not restart containerd"
    );
    let mut cri = node_cri(n);
    assert_eq!(cri.container_pid(&pod.agent), agent_pid);
    assert_eq!(n.task_pid("before"), Some(runc_pid));
    cri
}

/// A WASI pod on the handler the node now has: its container prints and exits 0; the pod (its
/// sandbox on the wasm shim) stays.
fn wasi_pod_ran(n: &SystemdNode, cri: &mut Cri) -> kwasm_tests::cri::Pod {
    let wasm = cri
        .run_pod("wasm-after", HANDLER, &n.sb.path().join("pod-logs"))
        .expect("a pod on the wasmtime handler");
    let id = cri
        .start(&wasm, &Container::new("hello", HELLO_WASM))
        .unwrap();
    let exited = cri.wait_exited(&wasm, "hello", &id, WITHIN);
    assert_eq!(exited.exit_code, 0, "{exited:?}");
    assert!(exited.log.starts_with(HELLO_LINE), "{exited:?}");
    wasm
}

/// The trigger goes while `wasm` runs on the shim: the agent refuses to remove it, saying which pod
/// holds it, and leaves binary and config in place.
fn removal_waits_for(n: &SystemdNode, api: &KubeApi, pod: &AgentPod, wasm: &kwasm_tests::cri::Pod) {
    let config = n.snapshot("/etc/containerd");
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node-"]);
    pod.wait_for(n, "the removal to be refused", || {
        api.event_reasons("n1").iter().any(|r| r == "RemoveBlocked")
    });
    let blocked = api
        .events("n1")
        .into_iter()
        .find(|e| e["reason"] == "RemoveBlocked")
        .unwrap();
    let message = blocked["message"].as_str().unwrap();
    assert!(
        message.contains("wasmtime (") && message.contains(&wasm.id),
        "the refusal does not name the WASI pod {}: {message}",
        wasm.id
    );
    assert!(n.path("/opt/kwasm/bin").join(BIN).exists());
    assert_eq!(n.snapshot("/etc/containerd"), config);
}

/// A KillMode=mixed drop-in, then the trigger again: refused, naming the setting; nothing written,
/// containerd not restarted.
fn kill_mode_refused(
    n: &SystemdNode,
    api: &KubeApi,
    pod: &AgentPod,
    etc_before: &[(String, Vec<u8>)],
) {
    drop_in(n, "kill-mode", "[Service]\nKillMode=mixed\n");
    let main_pid = n.containerd_pid();
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    pod.wait_for(n, "the KillMode=mixed unit to be refused", || {
        api.events("n1").iter().any(|e| {
            e["reason"] == "ProvisionFailed"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("KillMode=mixed"))
        })
    });
    assert_eq!(n.snapshot("/etc/containerd"), etc_before);
    assert!(!n.path("/opt/kwasm/bin").join(BIN).exists());
    assert_eq!(n.containerd_pid(), main_pid, "containerd was restarted");
}

/// What the restricted agent has, seen from the node: only CAP_SYS_CHROOT (effective, permitted,
/// bounding), no new privileges, a seccomp filter, its own PID namespace, a read-only root, and of
/// the host only the rendered mounts — and what is mounted below those (containerd's socket directory
/// holds every container's root filesystem): read-only too where the runtime makes mounts
/// recursively read-only (`rro`).
fn assert_confined(n: &SystemdNode, pid: i64, rendered: &RenderedAgent, rro: bool) {
    let status = n.read(&format!("/proc/{pid}/status"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .trim()
            .to_owned()
    };
    const SYS_CHROOT: &str = "0000000000040000";
    for caps in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(field(caps), SYS_CHROOT, "{caps}");
    }
    for caps in ["CapInh", "CapAmb"] {
        assert_eq!(field(caps), "0000000000000000", "{caps}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "no seccomp filter");
    let ns = |p: String| std::fs::read_link(n.path(&p)).unwrap();
    assert_ne!(
        ns(format!("/proc/{pid}/ns/pid")),
        ns("/proc/1/ns/pid".into()),
        "the agent shares the node's PID namespace"
    );
    assert_mounts(n, pid, rendered, rro);
}

/// The agent's mounts, from the node: a read-only root; under /host exactly the rendered mounts with
/// their read-only flags; below the read-only ones nothing writable when `rro`.
fn assert_mounts(n: &SystemdNode, pid: i64, rendered: &RenderedAgent, rro: bool) {
    let mountinfo = n.read(&format!("/proc/{pid}/mountinfo"));
    let mounts: Vec<(&str, bool)> = mountinfo
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[4], f[5].split(',').any(|o| o == "ro"))
        })
        .collect();
    assert!(
        mounts.iter().any(|&(p, ro)| p == "/" && ro),
        "root is writable: {mountinfo}"
    );
    let below = |p: &str, dir: &str| p.starts_with(&format!("{dir}/"));
    let mut top: Vec<&str> = mounts
        .iter()
        .map(|&(p, _)| p)
        .filter(|p| p.starts_with("/host/"))
        .filter(|p| {
            !rendered
                .host_mounts
                .iter()
                .any(|m| below(p, &m.container_path))
        })
        .collect();
    top.sort();
    top.dedup();
    let mut want: Vec<&str> = rendered
        .host_mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    want.sort();
    assert_eq!(top, want, "{mountinfo}");
    for m in &rendered.host_mounts {
        let (_, ro) = mounts.iter().find(|(p, _)| *p == m.container_path).unwrap();
        assert_eq!(*ro, m.read_only, "{}", m.container_path);
        let writable_below: Vec<&str> = mounts
            .iter()
            .filter(|&&(p, ro)| below(p, &m.container_path) && !ro)
            .map(|&(p, _)| p)
            .collect();
        if m.read_only && rro {
            assert!(
                writable_below.is_empty(),
                "writable below {}: {writable_below:?}",
                m.container_path
            );
        } else if !writable_below.is_empty() {
            eprintln!(
                "{} writable mount(s) below the read-only {} (this runtime cannot make it recursively read-only)",
                writable_below.len(),
                m.container_path
            );
        }
    }
}

/// The agent pod's settings directory (where the ConfigMap goes): the rendered settings (but for
/// the shim — the test's, over loopback HTTP — and where the agent listens: the pod shares this
/// machine's network with other tests), and the kubeconfig of n1's agent (its service account,
/// bound to n1).
fn daemonset_config(
    n: &SystemdNode,
    api: &KubeApi,
    rendered: &RenderedAgent,
    mode: Mode,
) -> std::path::PathBuf {
    let mut settings = rendered.settings.clone();
    let ours: toml_edit::DocumentMut = std::fs::read_to_string(&n.sb.settings)
        .unwrap()
        .parse()
        .unwrap();
    settings["shims"] = ours["shims"].clone();
    settings["artifacts"]["allow_http"] = toml_edit::value(true);
    settings["agent"]["listen"] = toml_edit::value(format!("127.0.0.1:{}", free_port()));
    assert_eq!(settings["host"]["root"].as_str(), Some("/host"));
    assert_eq!(
        settings["containerd"]["restart"].as_str(),
        Some(mode.restart())
    );
    let etc = n.sb.path().join("etc-kwasm-agent");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("config.toml"), settings.to_string()).unwrap();
    std::fs::copy(api.agent_kubeconfig("n1"), etc.join("kubeconfig")).unwrap();
    etc
}

/// The agent's image as imported into the node's CRI namespace.
fn agent_image(n: &SystemdNode) -> String {
    let listed = String::from_utf8_lossy(&n.ctr(&["-n", "k8s.io", "images", "ls", "-q"]).stdout)
        .into_owned();
    listed
        .lines()
        .find(|l| l.starts_with("ghcr.io/kwasm/kwasm-agent"))
        .unwrap_or_else(|| panic!("no agent image after import: {listed}"))
        .to_owned()
}

struct AgentPod {
    pod: kwasm_tests::cri::Pod,
    /// The agent container's ID.
    agent: String,
}

impl AgentPod {
    /// Polls `done` for up to 90 s; on time-out, fails with the agent's log and containerd's journal.
    /// Holds no connection to containerd (one left idle across a restart can hold up its stop).
    fn wait_for(&self, n: &SystemdNode, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}\njournal:\n{}",
                self.pod.log("agent"),
                n.journal("containerd", 20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// As the kubelet starts the DaemonSet's pod: the rendered security context, host PID namespace or
/// not, hostPath mounts, the settings where the ConfigMap goes, NODE_NAME.
fn start_daemonset_pod(
    n: &SystemdNode,
    cri: &mut Cri,
    image: &str,
    etc: &std::path::Path,
    rendered: &RenderedAgent,
    rro: bool,
) -> AgentPod {
    let logs = n.sb.path().join("agent-logs");
    let pod = if rendered.host_pid {
        cri.run_pod_as(
            "kwasm-agent-n1",
            "runc",
            &logs,
            rendered.security.privileged,
        )
    } else {
        assert!(!rendered.security.privileged);
        cri.run_pod_unprivileged("kwasm-agent-n1", "runc", &logs)
    }
    .expect("the agent's pod sandbox");
    let mut agent = Container::new("agent", image);
    agent.args = vec!["run", "--config", "/etc/kwasm-agent/config.toml"];
    agent.security = Some(rendered.security.clone());
    agent.spec_mounts = rendered.cri_mounts(|p| n.path(p), etc, rro);
    agent.env = vec![
        ("NODE_NAME", "n1".into()),
        ("POD_NAMESPACE", "kube-system".into()),
        ("KUBECONFIG", "/etc/kwasm-agent/kubeconfig".into()),
        ("KWASM_LOG", "info,kube=warn".into()),
    ];
    let agent = cri.start(&pod, &agent).expect("the agent container starts");
    AgentPod { pod, agent }
}

#[test]
fn the_daemonset_pod_provisions_a_containerd_1_7_node() {
    the_daemonset_pod_on("1.7", Mode::Privileged, None);
}

#[test]
fn the_daemonset_pod_provisions_a_containerd_2_1_node() {
    the_daemonset_pod_on("2.1", Mode::Privileged, None);
}

#[test]
fn the_restricted_daemonset_pod_provisions_a_containerd_1_7_node() {
    the_daemonset_pod_on("1.7", Mode::Restricted, None);
}

#[test]
fn the_restricted_daemonset_pod_provisions_a_containerd_2_1_node() {
    the_daemonset_pod_on("2.1", Mode::Restricted, None);
}

#[test]
fn the_restricted_daemonset_pod_provisions_an_aks_azurelinux3_node() {
    the_daemonset_pod_on(
        "2.1",
        Mode::Restricted,
        Some("aks-azurelinux3-containerd2.toml"),
    );
}
