//! The configs real platforms write (`tests/configs/`, each file naming its source and the containerd
//! release that reads it), each as a node's `/etc/containerd/config.toml` in a sandbox host holding
//! that release's own binary: `plan` shows and proves the effective change, `apply` adds the runtime
//! where that containerd reads it — proven here by the test's own `containerd config dump`, compared
//! key by key with the dump before — and `remove` gives the file back byte for byte. A `version = 4`
//! file (containerd 2.3) cannot be read by any release installable here: its text is checked against
//! 2.3's documented format instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use kwasm_tests::archive::{fake_binary, release, sha256};
use kwasm_tests::artifact_server::{ArtifactServer, Behavior};
use kwasm_tests::sandbox::{artifact_settings, Sandbox, ShimSpec};
use kwasm_tests::systemd_node::Release;

const BIN: &str = "containerd-shim-kwtest-v2";
const INSTALLED: &str = "/opt/kwasm/bin/containerd-shim-kwtest-v2";
const MAIN: &str = "/etc/containerd/config.toml";

struct Case {
    sb: Sandbox,
    _server: ArtifactServer,
    original: String,
    /// The release that reads the file (None: none installable here).
    containerd: Option<PathBuf>,
}

fn corpus(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The series the file's `# containerd:` line names.
fn series(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.strip_prefix("# containerd: "))
        .expect("every corpus file says which containerd reads it")
        .trim()
}

impl Case {
    /// None (skipped outside CI) when the release that reads the file is not here.
    fn new(name: &str) -> Option<Self> {
        let original = corpus(name);
        let containerd = match series(&original) {
            "2.3" => None,
            s => Some(Release::find(s)?.binary()),
        };
        let sb = Sandbox::new();
        std::fs::write(sb.host(MAIN), &original).unwrap();
        if let Some(bin) = &containerd {
            kwasm_tests::rootfs::install_program(&sb.root, bin, Path::new("/usr/bin/containerd"));
        }
        let server = ArtifactServer::start();
        let archive = release(BIN, &fake_binary(name, 4096));
        let digest = sha256(&archive);
        server.route("/a", vec![Behavior::Serve(archive)]);
        let shim = ShimSpec::new("kwtest", BIN).platform("amd64", &server.url("/a"), Some(&digest));
        // No containerd runs in the sandbox: who runs the shim is asked of the processes.
        let settings = artifact_settings("", &[shim]).replace(
            "restart = \"none\"\n",
            "restart = \"none\"\nin_use = \"processes\"\n",
        );
        sb.write_settings(&settings);
        Some(Self {
            sb,
            _server: server,
            original,
            containerd,
        })
    }

    fn run(&self, cmd: &str) -> kwasm_tests::agent::Run {
        self.sb.run(cmd, &[])
    }

    /// `containerd config dump` of the node's config, by the release's binary, run by the test.
    fn dump(&self) -> toml::Table {
        let bin = self.containerd.as_ref().unwrap();
        let out = Command::new("chroot")
            .arg(&self.sb.root)
            .args(["/usr/bin/containerd", "--config", MAIN, "config", "dump"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} config dump: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).parse().unwrap()
    }

    fn read(&self, host_path: &str) -> Option<String> {
        std::fs::read_to_string(self.sb.host(host_path)).ok()
    }
}

/// The CRI runtimes of a dump (1.x prints them under grpc.v1.cri, 2.x under cri.v1.runtime).
fn runtimes(dump: &mut toml::Table) -> &mut toml::Table {
    let plugins = dump["plugins"].as_table_mut().unwrap();
    let plugin = ["io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"]
        .into_iter()
        .find(|p| plugins.contains_key(*p))
        .unwrap();
    plugins[plugin]["containerd"]["runtimes"]
        .as_table_mut()
        .unwrap()
}

/// The default runtime's SystemdCgroup, as containerd reads it: what the new runtime must inherit.
fn default_systemd_cgroup(dump: &mut toml::Table) -> Option<bool> {
    let default = {
        let plugins = dump["plugins"].as_table().unwrap();
        let cri = plugins
            .get("io.containerd.cri.v1.runtime")
            .or_else(|| plugins.get("io.containerd.grpc.v1.cri"))
            .unwrap();
        cri["containerd"]["default_runtime_name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    runtimes(dump)[&default]
        .get("options")
        .and_then(|o| o.get("SystemdCgroup"))
        .and_then(|v| v.as_bool())
}

fn proven_by_containerd(name: &str) {
    let Some(case) = Case::new(name) else { return };
    let mut before = case.dump();
    let inherited = default_systemd_cgroup(&mut before);

    let plan = case.run("plan");
    plan.ok();
    assert!(
        plan.stdout.contains("runtimes.kwtest = ")
            && plan
                .stdout
                .contains("containerd effective config: proven (only the agent's runtimes change)"),
        "{name}: plan does not show the proven effective change:\n{}",
        plan.stdout
    );

    case.run("apply").ok();
    let mut after = case.dump();
    let added = runtimes(&mut after)
        .remove("kwtest")
        .unwrap_or_else(|| panic!("{name}: containerd's effective config does not list kwtest"));
    assert_eq!(added["runtime_type"].as_str(), Some(INSTALLED), "{name}");
    let systemd_cgroup = added
        .get("options")
        .and_then(|o| o.get("SystemdCgroup"))
        .and_then(|v| v.as_bool());
    assert_eq!(
        systemd_cgroup, inherited,
        "{name}: the runtime does not inherit the default runtime's cgroup driver"
    );
    after.remove("imports");
    before.remove("imports");
    assert_eq!(
        after, before,
        "{name}: a setting of the node changed in containerd's effective config"
    );

    case.run("remove").ok();
    assert_eq!(
        case.read(MAIN).as_deref(),
        Some(case.original.as_str()),
        "{name}"
    );
    assert!(
        case.read("/etc/containerd/conf.d/99-kwasm.toml").is_none(),
        "{name}"
    );
    let mut again = case.dump();
    again.remove("imports");
    assert_eq!(
        again, before,
        "{name}: remove left containerd's effective config changed"
    );
}

macro_rules! proven {
    ($($test:ident: $file:literal,)*) => {$(
        #[test]
        fn $test() {
            proven_by_containerd($file);
        }
    )*};
}

proven! {
    aks_ubuntu2204_containerd17: "aks-ubuntu2204-containerd17.toml",
    aks_ubuntu2204_containerd17_gpu: "aks-ubuntu2204-containerd17-gpu.toml",
    aks_ubuntu2204_containerd17_kata: "aks-ubuntu2204-containerd17-kata.toml",
    aks_ubuntu2204_containerd17_artifact_streaming: "aks-ubuntu2204-containerd17-artifact-streaming.toml",
    aks_azurelinux3_containerd2: "aks-azurelinux3-containerd2.toml",
    aks_azurelinux3_containerd2_gpu: "aks-azurelinux3-containerd2-gpu.toml",
    aks_azurelinux3_containerd2_kata: "aks-azurelinux3-containerd2-kata.toml",
    aks_azurelinux3_containerd2_artifact_streaming: "aks-azurelinux3-containerd2-artifact-streaming.toml",
    aks_azurelinux3_containerd2_data_dir: "aks-azurelinux3-containerd2-data-dir.toml",
    eks_al2023_nodeadm_containerd17: "eks-al2023-nodeadm-containerd17.toml",
    eks_al2023_nodeadm_containerd2: "eks-al2023-nodeadm-containerd2.toml",
}

#[test]
fn aks_ubuntu2404_containerd23_version_4_by_its_documented_format() {
    // containerd 2.3 reads version 4 with the same CRI plugin names as version 3 (its config
    // migration adds none), and refuses a drop-in whose version is higher than the root's
    // (containerd#12891): the drop-in says 4 and uses cri.v1.runtime, as the root does.
    let case = Case::new("aks-ubuntu2404-containerd23.toml").unwrap();
    case.run("apply").ok();
    let drop_in = case.read("/etc/containerd/conf.d/99-kwasm.toml").unwrap();
    let doc: toml::Table = drop_in.parse().unwrap();
    assert_eq!(doc["version"].as_integer(), Some(4), "{drop_in}");
    let rt = &doc["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["kwtest"];
    assert_eq!(rt["runtime_type"].as_str(), Some(INSTALLED), "{drop_in}");
    assert_eq!(
        rt["options"]["SystemdCgroup"].as_bool(),
        Some(true),
        "{drop_in}"
    );
    let main: toml::Table = case.read(MAIN).unwrap().parse().unwrap();
    assert_eq!(
        main["imports"].as_array().unwrap()[0].as_str(),
        Some("/etc/containerd/conf.d/99-kwasm.toml")
    );
    case.run("remove").ok();
    assert_eq!(case.read(MAIN).as_deref(), Some(case.original.as_str()));
    assert!(!case.sb.host("/etc/containerd/conf.d").exists());
}
