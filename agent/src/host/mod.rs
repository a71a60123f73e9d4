//! The host as the agent sees it: every host path from the settings is resolved under the host root
//! (`/host` in the DaemonSet, a sandbox directory in tests), and nothing outside it is touched.

pub mod atomic;
pub mod exec;
pub mod lock;
pub mod memory;
pub mod systemd;

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};

#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the agent reaches the host path `host_path` (absolute, as the host sees it).
    pub fn resolve(&self, host_path: impl AsRef<Path>) -> anyhow::Result<PathBuf> {
        let p = host_path.as_ref();
        if !p.is_absolute() {
            bail!("host path {} must be absolute", p.display());
        }
        let mut out = self.root.clone();
        for c in p.components() {
            match c {
                Component::RootDir => {}
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    bail!("host path {} must not contain '..'", p.display())
                }
            }
        }
        Ok(out)
    }

    pub fn exists(&self, host_path: impl AsRef<Path>) -> bool {
        self.resolve(host_path).map(|p| p.exists()).unwrap_or(false)
    }
}

/// Where the agent keeps its binaries, cache, state and backups under `install_dir`. Each path exists
/// twice: as the host names it (written into containerd's config) and as the agent reaches it.
#[derive(Debug, Clone)]
pub struct InstallLayout {
    pub host_dir: PathBuf,
    pub dir: PathBuf,
}

impl InstallLayout {
    pub fn new(host: &HostRoot, install_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            host_dir: install_dir.to_owned(),
            dir: host.resolve(install_dir)?,
        })
    }

    /// The host's name for a path the agent reaches under the install directory.
    pub fn host_path(&self, agent_path: &Path) -> anyhow::Result<PathBuf> {
        let rel = agent_path.strip_prefix(&self.dir).with_context(|| {
            format!(
                "{} is not under the install directory {}",
                agent_path.display(),
                self.dir.display()
            )
        })?;
        Ok(self.host_dir.join(rel))
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }
    pub fn host_bin_path(&self, binary: &str) -> PathBuf {
        self.host_dir.join("bin").join(binary)
    }
    pub fn bin_path(&self, binary: &str) -> PathBuf {
        self.bin_dir().join(binary)
    }
    /// Where each version of a shim binary lives: `versions/<first 16 hex of its sha256>/<binary>`.
    /// `bin/<binary>` is a symlink to the current one; an older one stays while processes run it.
    pub fn version_path(&self, binary: &str, binary_sha256: &str) -> PathBuf {
        self.dir
            .join("versions")
            .join(version_id(binary_sha256))
            .join(binary)
    }
    pub fn host_version_path(&self, binary: &str, binary_sha256: &str) -> PathBuf {
        self.host_dir
            .join("versions")
            .join(version_id(binary_sha256))
            .join(binary)
    }
    /// Verified archives, named by their SHA-256.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache").join("sha256")
    }
    /// Downloads in progress; a crash leaves them here to be resumed.
    pub fn partial_dir(&self) -> PathBuf {
        self.dir.join("cache").join("partial")
    }
    /// Binaries being unpacked; renamed into `bin/` only once their archive is verified.
    pub fn staging_dir(&self) -> PathBuf {
        self.dir.join("cache").join("staging")
    }
    pub fn backup_dir(&self) -> PathBuf {
        self.dir.join("backup")
    }
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    pub fn ensure_dirs(&self) -> anyhow::Result<()> {
        for d in [
            self.bin_dir(),
            self.cache_dir(),
            self.partial_dir(),
            self.staging_dir(),
            self.backup_dir(),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }
}

fn version_id(sha256: &str) -> &str {
    sha256.get(..16).unwrap_or(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_under_root_and_refuses_escapes() {
        let h = HostRoot::new("/host");
        assert_eq!(
            h.resolve("/etc/containerd/config.toml").unwrap(),
            PathBuf::from("/host/etc/containerd/config.toml")
        );
        assert!(h.resolve("etc/x").is_err());
        assert!(h.resolve("/etc/../../x").is_err());
        assert_eq!(
            HostRoot::new("/").resolve("/opt/kwasm").unwrap(),
            PathBuf::from("/opt/kwasm")
        );
    }
}
