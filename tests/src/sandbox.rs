//! A sandbox host: a short temp directory (unix socket paths must stay under 108 bytes) holding the host
//! root the agent works in and the settings file it reads.

use std::path::{Path, PathBuf};

pub const MINIMAL_CONTAINERD_CONFIG: &str = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n    runtime_type = \"io.containerd.runc.v2\"\n";

pub struct Sandbox {
    dir: tempfile::TempDir,
    pub root: PathBuf,
    pub settings: PathBuf,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kw.")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let settings = dir.path().join("settings.toml");
        // A host has a shell: the agent runs a new shim binary (here, a script) as the host to
        // prove it starts before installing it.
        crate::rootfs::install_program(&root, Path::new("/bin/sh"), Path::new("/bin/sh"));
        // A node has a containerd config; this one is the minimal shape of a kubeadm node's.
        let cfg = root.join("etc/containerd/config.toml");
        std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        std::fs::write(&cfg, MINIMAL_CONTAINERD_CONFIG).unwrap();
        Self {
            dir,
            root,
            settings,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `kwasm-agent CMD --config <settings> --host-root <root> [extra...]` on this sandbox host.
    pub fn run(&self, cmd: &str, extra: &[&str]) -> crate::agent::Run {
        crate::agent::run_cmd(cmd, &self.settings, &self.root, extra)
    }

    pub fn write_settings(&self, text: &str) {
        std::fs::write(&self.settings, text).unwrap();
    }

    /// Where a host path lands in this sandbox.
    pub fn host(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    pub fn bin(&self, binary: &str) -> PathBuf {
        self.host("/opt/kwasm/bin").join(binary)
    }

    /// Files in a host directory, sorted ('.'-files included).
    pub fn list(&self, host_dir: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.host(host_dir))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[derive(Clone)]
pub struct ShimSpec {
    pub name: String,
    pub binary: String,
    pub version: String,
    pub runtime_type: String,
    /// (arch, url, sha256)
    pub platforms: Vec<(String, String, Option<String>)>,
    /// The body of `[shims.verify]` (TOML lines); None: no signature required.
    pub verify: Option<String>,
}

impl ShimSpec {
    pub fn new(name: &str, binary: &str) -> Self {
        Self {
            name: name.into(),
            binary: binary.into(),
            version: "v1.0.0".into(),
            runtime_type: format!("io.containerd.{name}.v2"),
            platforms: vec![],
            verify: None,
        }
    }

    pub fn verify(mut self, body: &str) -> Self {
        self.verify = Some(body.into());
        self
    }

    pub fn platform(mut self, arch: &str, url: &str, sha256: Option<&str>) -> Self {
        self.platforms
            .push((arch.into(), url.into(), sha256.map(Into::into)));
        self
    }

    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "[[shims]]\nname = {:?}\nruntime_type = {:?}\nbinary = {:?}\nversion = {:?}\n",
            self.name, self.runtime_type, self.binary, self.version
        );
        if let Some(v) = &self.verify {
            s.push_str(&format!("[shims.verify]\n{v}\n"));
        }
        for (arch, url, sha) in &self.platforms {
            s.push_str(&format!(
                "[[shims.platforms]]\narch = {arch:?}\nurl = {url:?}\n"
            ));
            if let Some(sha) = sha {
                s.push_str(&format!("sha256 = {sha:?}\n"));
            }
        }
        s
    }
}

/// Settings for artifact tests: loopback http allowed, quick retries and timeouts so failures show fast.
pub fn artifact_settings(extra: &str, shims: &[ShimSpec]) -> String {
    let mut s = String::from(
        "[host]\ninstall_dir = \"/opt/kwasm\"\n\n[artifacts]\nallow_http = true\nread_timeout = \"1s\"\nconnect_timeout = \"2s\"\nbackoff = \"50ms\"\nattempts = 4\n",
    );
    s.push_str(extra);
    // No containerd in these sandboxes: configure, but do not try to restart one.
    s.push_str("\n[containerd]\nrestart = \"none\"\n\n");
    for sh in shims {
        s.push_str(&sh.to_toml());
    }
    s
}
