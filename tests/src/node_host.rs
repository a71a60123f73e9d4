//! A sandbox node: a real containerd (with the operator's comments in its config), the test shim
//! (containerd's runc shim renamed) served over loopback HTTP, and the agent's settings pointing at
//! both with host root `/`.

use std::path::{Path, PathBuf};

use crate::agent::{run_cmd, Run};
use crate::archive::{release, sha256};
use crate::artifact_server::{ArtifactServer, Behavior};
use crate::containerd::Containerd;
use crate::sandbox::{Sandbox, ShimSpec};

pub const SHIM_BIN: &str = "containerd-shim-kwtest-v2";

/// The shim release a node host serves and its settings name.
pub struct TestShim {
    pub name: String,
    pub binary: String,
    pub runtime_type: String,
    pub archive: Vec<u8>,
}

impl TestShim {
    /// containerd's runc shim under another name: a shim that really runs containers.
    pub fn kwtest() -> Self {
        let shim_bytes = std::fs::read("/usr/bin/containerd-shim-runc-v2").unwrap();
        Self {
            name: "kwtest".into(),
            binary: SHIM_BIN.into(),
            runtime_type: "io.containerd.kwtest.v2".into(),
            archive: release(SHIM_BIN, &shim_bytes),
        }
    }
}

/// Field order matters: containerd (and its containers) stop before the sandbox directory goes.
pub struct NodeHost {
    pub cd: Containerd,
    pub server: ArtifactServer,
    pub sb: Sandbox,
    pub original: String,
    pub archive: Vec<u8>,
    pub shim: TestShim,
}

impl NodeHost {
    pub fn new() -> Self {
        Self::with(|_| String::new())
    }

    /// `extra(sandbox)` adds TOML before the shims (e.g. an `[agent]` table).
    pub fn with(extra: impl FnOnce(&Sandbox) -> String) -> Self {
        Self::with_options("", extra)
    }

    pub fn with_options(options: &str, extra: impl FnOnce(&Sandbox) -> String) -> Self {
        Self::serving(TestShim::kwtest(), options, extra)
    }

    /// A node whose settings name `shim`, served over loopback HTTP with its digest pinned.
    pub fn serving(shim: TestShim, options: &str, extra: impl FnOnce(&Sandbox) -> String) -> Self {
        let sb = Sandbox::new();
        let cd = Containerd::start(&sb);
        let server = ArtifactServer::start();
        let archive = shim.archive.clone();
        let route = format!("/{}.tar.gz", shim.name);
        server.route(&route, vec![Behavior::Serve(archive.clone())]);
        let mut spec = ShimSpec::new(&shim.name, &shim.binary).platform(
            "amd64",
            &server.url(&route),
            Some(&sha256(&archive)),
        );
        spec.runtime_type = shim.runtime_type.clone();
        let shim_toml = spec
            .to_toml()
            .replacen("version = ", &format!("{options}\nversion = "), 1);
        let settings = format!(
            "[host]\nroot = \"/\"\ninstall_dir = \"{dir}/opt/kwasm\"\n\n[artifacts]\nallow_http = true\nbackoff = \"100ms\"\n\n[containerd]\nconfig = \"{config}\"\nsocket = \"{socket}\"\nrestart = [\"{restart}\"]\ntimeout = \"20s\"\n\n{extra}\n{shim_toml}",
            dir = sb.path().display(),
            config = cd.config.display(),
            socket = cd.socket.display(),
            restart = cd.restart_script().display(),
            extra = extra(&sb),
        );
        sb.write_settings(&settings);
        let original = std::fs::read_to_string(&cd.config).unwrap();
        Self {
            cd,
            server,
            sb,
            original,
            archive,
            shim,
        }
    }

    pub fn agent(&self, cmd: &str, extra: &[&str]) -> Run {
        run_cmd(
            cmd,
            &self.sb.settings,
            Path::new("/"),
            &[&["--arch", "amd64"], extra].concat(),
        )
    }

    /// The shim binary inside the served archive.
    pub fn shim_binary(&self) -> Vec<u8> {
        let mut out = Vec::new();
        kwasm_agent::artifact::unpack::unpack(
            &self.archive[..],
            &self.shim.binary,
            &[],
            &mut out,
            u64::MAX,
        )
        .expect("the served archive holds the shim");
        out
    }

    pub fn binary(&self) -> PathBuf {
        self.sb.path().join("opt/kwasm/bin").join(&self.shim.binary)
    }

    pub fn config(&self) -> String {
        std::fs::read_to_string(&self.cd.config).unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        let r = self.agent("status", &["--output", "json"]);
        r.ok();
        serde_json::from_str(&r.stdout).unwrap()
    }
}

impl Default for NodeHost {
    fn default() -> Self {
        Self::new()
    }
}

/// One node of a test cluster: its sandbox host with a live container, and its agent watching it.
pub struct ClusterNode {
    pub name: String,
    /// Before `host`: fields drop in order, and an agent still running when its host root is
    /// removed would make it again outside any test's directory.
    pub agent: crate::agent::RunningAgent,
    pub host: NodeHost,
    pub live: i32,
    pub port: u16,
}

/// Node `name` added to `api`: `settings(port)` is the TOML before the shims (the agent listens on
/// `port`), `prepare` runs on the host before the agent starts (its result is returned beside the
/// node), and a container named `live` runs throughout.
pub fn cluster_node<T>(
    api: &crate::kube_api::KubeApi,
    name: &str,
    live: &str,
    settings: impl FnOnce(u16) -> String,
    prepare: impl FnOnce(&NodeHost) -> T,
) -> (ClusterNode, T) {
    api.add_node(name, "amd64");
    let port = crate::kube_api::free_port();
    let host = NodeHost::with(|_| settings(port));
    let prepared = prepare(&host);
    let live = host.cd.run_container(live, None);
    let agent = crate::agent::RunningAgent::start(&host, &api.agent_kubeconfig(name), name, port);
    let node = ClusterNode {
        name: name.to_owned(),
        host,
        agent,
        live,
        port,
    };
    (node, prepared)
}
