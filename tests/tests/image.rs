//! The agent's container image, run as the DaemonSet runs it: imported into a real containerd, started
//! through CRI as a privileged pod with the host's PID namespace and the host's `/` at `/host`, its
//! settings where the chart mounts them, NODE_NAME set, the tests' API server reachable. Annotating
//! the node must make the containerized agent provision the host, and the node's label turn true.
//!
//! The image archive comes from KWASM_IMAGE_ARCHIVE (scripts/build-image.sh; scripts/test.sh sets it).
//! Without it the test is skipped, except under CI where that is a failure.

use std::time::{Duration, Instant};

use kwasm_tests::built::image_archive;
use kwasm_tests::cri::{Container, Cri};
use kwasm_tests::kube_api::{free_port, KubeApi};
use kwasm_tests::node_host::NodeHost;
use kwasm_tests::workloads;

const IMAGE: &str = "ghcr.io/kwasm/kwasm-agent";

#[test]
fn the_image_runs_as_the_daemonset_pod_and_provisions_its_host() {
    let Some(archive) = image_archive() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    api.add_node("n1", "amd64");
    let port = free_port();
    // Settings as the chart renders them: host root /host; every other path as the host sees it.
    let host = NodeHost::with(|_| {
        format!("[agent]\nlisten = \"127.0.0.1:{port}\"\nresync = \"2s\"\nmax_backoff = \"2s\"\n")
    });
    let settings = std::fs::read_to_string(&host.sb.settings)
        .unwrap()
        .replacen("root = \"/\"", "root = \"/host\"", 1)
        .replace(
            "[containerd]\n",
            "[containerd]\nbinary = \"/usr/bin/containerd\"\n",
        );
    let etc = host.sb.path().join("etc-kwasm-agent");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("config.toml"), settings).unwrap();
    std::fs::copy(api.agent_kubeconfig("n1"), etc.join("kubeconfig")).unwrap();

    // The image, and the pause image the pod sandbox needs, in the CRI plugin's namespace.
    workloads::import_all(&host.cd, &host.sb.path().join("images"));
    let out = host.cd.ctr(&[
        "-n",
        "k8s.io",
        "images",
        "import",
        archive.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed =
        String::from_utf8_lossy(&host.cd.ctr(&["-n", "k8s.io", "images", "ls", "-q"]).stdout)
            .into_owned();
    let image = listed
        .lines()
        .find(|l| l.starts_with(IMAGE))
        .unwrap_or_else(|| panic!("no {IMAGE} image after import: {listed}"))
        .to_owned();

    let before = host.cd.run_container("before", None);
    let mut cri = Cri::connect(&host.cd.socket);
    let pod = cri
        .run_pod_as(
            "kwasm-agent-n1",
            "runc",
            &host.sb.path().join("pod-logs"),
            true,
        )
        .expect("a privileged host-PID pod sandbox");
    let mut agent = Container::new("agent", &image);
    agent.args = vec!["run", "--config", "/etc/kwasm-agent/config.toml"];
    agent.privileged = true;
    // The chart mounts /host with HostToContainer propagation; this machine's `/` is a private mount,
    // which containerd refuses to propagate from, so the test's mount is private.
    agent.host_propagation = false;
    agent.mounts = vec![("/host", "/".into()), ("/etc/kwasm-agent", etc.clone())];
    agent.env = vec![
        ("NODE_NAME", "n1".into()),
        ("KUBECONFIG", "/etc/kwasm-agent/kubeconfig".into()),
        ("KWASM_LOG", "info,kube=warn".into()),
        // This machine's PID 1 refuses access to its namespaces: the harness is the host here.
        ("KWASM_HOST_PID", std::process::id().to_string()),
    ];
    cri.start(&pod, &agent).expect("the agent container starts");

    let ready = wait_http(port, "/readyz", Duration::from_secs(30));
    assert!(ready, "agent never ready; log:\n{}", cri.log(&pod, "agent"));
    api.kubectl_ok(&["annotate", "node", "n1", "kwasm.sh/kwasm-node=true"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.provisioned_label("n1").as_deref() != Some("true") {
        assert!(
            Instant::now() < deadline,
            "the containerized agent never provisioned the node; log:\n{}",
            cri.log(&pod, "agent")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        host.config().contains("runtimes.kwtest]"),
        "{}",
        host.config()
    );
    assert!(host.binary().exists());
    assert_eq!(host.status()["shims"][0]["loaded"], true);
    assert_eq!(
        host.cd.task_pid("before"),
        Some(before),
        "a running container was disturbed"
    );
}

/// Polls GET `path` on 127.0.0.1:`port` until it answers 200.
fn wait_http(port: u16, path: &str, within: Duration) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            if r.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
