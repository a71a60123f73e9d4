//! The arm64 agent from the image index, run here under qemu-user (`qemu-aarch64-static`, no binfmt
//! registration; the amd64 programs it starts — containerd, the restart script, the shim's start
//! probe — run natively): `--version`, `check` on the chart's rendered settings, `plan`, and
//! `apply`/`remove` against a real (amd64) sandbox containerd with the shim served only under the
//! catalog's `arm64` entry, so the agent must pick it from its own `uname -m` (aarch64). The digest is
//! checked on the download (a wrong one is refused), and remove gives the config back byte for byte.
//! qemu-user shows behaviour, not speed: nothing here is timed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use kwasm_tests::agent::{output, Run};
use kwasm_tests::built::image_archive;
use kwasm_tests::daemonset::RenderedAgent;
use kwasm_tests::node_host::NodeHost;

const QEMU: &str = "qemu-aarch64-static";

/// The OCI archive's blobs and index.json, by name.
fn layout(archive: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn blob(files: &std::collections::BTreeMap<String, Vec<u8>>, digest: &str) -> Vec<u8> {
    let name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let data = files.get(&name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(
        kwasm_tests::archive::sha256(data),
        digest.trim_start_matches("sha256:")
    );
    data.clone()
}

fn json(data: &[u8]) -> serde_json::Value {
    serde_json::from_slice(data).unwrap()
}

/// The image is one index with a manifest per platform; returns the arm64 agent binary.
fn arm64_agent_from_the_image(archive: &Path, dir: &Path) -> PathBuf {
    let files = layout(archive);
    let top = json(&files["index.json"]);
    let entry = &top["manifests"][0];
    assert_eq!(top["manifests"].as_array().unwrap().len(), 1, "{top}");
    assert_eq!(
        entry["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let index = json(&blob(&files, entry["digest"].as_str().unwrap()));
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{index}");
    let mut agent = None;
    for m in index["manifests"].as_array().unwrap() {
        let manifest = json(&blob(&files, m["digest"].as_str().unwrap()));
        let config = json(&blob(
            &files,
            manifest["config"]["digest"].as_str().unwrap(),
        ));
        assert_eq!(
            config["architecture"], m["platform"]["architecture"],
            "{config}"
        );
        let layer = blob(&files, manifest["layers"][0]["digest"].as_str().unwrap());
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]));
        let mut binary = Vec::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap() == Path::new("usr/local/bin/kwasm-agent") {
                e.read_to_end(&mut binary).unwrap();
            }
        }
        // ELF e_machine: 62 x86-64, 183 AArch64.
        let machine = u16::from_le_bytes([binary[18], binary[19]]);
        let want = if m["platform"]["architecture"] == "arm64" {
            183
        } else {
            62
        };
        assert_eq!(
            machine, want,
            "the {} image holds another architecture's agent",
            m["platform"]["architecture"]
        );
        if want == 183 {
            agent = Some(binary);
        }
    }
    let path = dir.join("kwasm-agent-arm64");
    std::fs::write(&path, agent.unwrap()).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// qemu-user on PATH; None (skipped) outside CI, where scripts/test.sh installs it.
fn qemu() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(QEMU))
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{QEMU} is not installed (Debian: qemu-user-static)"
        );
        eprintln!("skipped: no {QEMU}");
    }
    found
}

struct Arm64Agent {
    qemu: PathBuf,
    binary: PathBuf,
}

impl Arm64Agent {
    fn run(&self, args: &[&str]) -> Run {
        let mut c = Command::new(&self.qemu);
        c.arg(&self.binary).args(args).env("KWASM_LOG", "info");
        for v in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            c.env_remove(v);
        }
        output(c)
    }

    fn on(&self, n: &NodeHost, cmd: &str) -> Run {
        self.run(&[
            cmd,
            "--config",
            n.sb.settings.to_str().unwrap(),
            "--host-root",
            "/",
        ])
    }
}

fn arm64_agent(dir: &Path) -> Option<Arm64Agent> {
    let archive = image_archive()?;
    let qemu = qemu()?;
    Some(Arm64Agent {
        binary: arm64_agent_from_the_image(&archive, dir),
        qemu,
    })
}

/// A sandbox node whose catalog has the shim only for arm64.
fn arm64_node() -> NodeHost {
    let n = NodeHost::new();
    let settings = std::fs::read_to_string(&n.sb.settings).unwrap();
    assert!(settings.contains("arch = \"amd64\""));
    std::fs::write(
        &n.sb.settings,
        settings.replace("arch = \"amd64\"", "arch = \"arm64\""),
    )
    .unwrap();
    n
}

#[test]
fn the_arm64_agent_from_the_image_runs_under_qemu_user() {
    let dir = tempfile::tempdir().unwrap();
    let Some(a) = arm64_agent(dir.path()) else {
        return;
    };
    let v = a.run(&["--version"]);
    v.ok();
    assert!(v.stdout.starts_with("kwasm-agent "), "{}", v.stdout);

    // The chart's rendered settings (the ConfigMap the DaemonSet mounts).
    let rendered = RenderedAgent::load("kwasm-agent.yaml");
    let settings = dir.path().join("chart-settings.toml");
    std::fs::write(&settings, rendered.settings.to_string()).unwrap();
    a.run(&["check", "--config", settings.to_str().unwrap()])
        .ok();
}

#[test]
fn the_arm64_agent_picks_the_arm64_shim_and_applies_and_removes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(a) = arm64_agent(dir.path()) else {
        return;
    };
    let n = arm64_node();
    let before = n.cd.run_container("before", None);

    let plan = a.on(&n, "plan");
    plan.ok();
    assert!(
        plan.stdout.contains("node architecture: arm64")
            && plan.stdout.contains("shim kwtest: download"),
        "{}",
        plan.stdout
    );
    assert_eq!(n.config(), n.original, "plan changed the config");

    let r = a.on(&n, "apply");
    r.ok();
    assert!(
        r.stdout.contains("CRI plugin lists handlers: kwtest"),
        "{}",
        r.stdout
    );
    assert_eq!(
        n.cd.task_pid("before"),
        Some(before),
        "a running container was disturbed"
    );
    assert_eq!(std::fs::read(n.binary()).unwrap(), n.shim_binary());
    let status = a.run(&[
        "status",
        "--config",
        n.sb.settings.to_str().unwrap(),
        "--host-root",
        "/",
        "--output",
        "json",
    ]);
    status.ok();
    let st: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(st["shims"][0]["arch"], "arm64", "{st}");

    a.on(&n, "remove").ok();
    assert_eq!(
        n.config(),
        n.original,
        "remove did not restore the config byte for byte"
    );
    assert!(!n.binary().exists());
    assert_eq!(n.cd.task_pid("before"), Some(before));
}

#[test]
fn the_arm64_agent_refuses_a_wrong_digest_and_leaves_the_host_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let Some(a) = arm64_agent(dir.path()) else {
        return;
    };
    let n = arm64_node();
    let settings = std::fs::read_to_string(&n.sb.settings).unwrap();
    let pinned = kwasm_tests::archive::sha256(&n.archive);
    std::fs::write(&n.sb.settings, settings.replace(&pinned, &"0".repeat(64))).unwrap();
    let r = a.on(&n, "apply");
    r.failed();
    assert!(r.reason().contains("sha256 mismatch"), "{}", r.reason());
    assert_eq!(n.config(), n.original);
    assert!(!n.binary().exists());
}
