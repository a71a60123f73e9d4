//! Reading, from the host, exactly the inputs the config edit declares (`edit::inputs`), the backups of
//! originals the agent kept, and what the host's containerd binary says about itself.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::config::ContainerdVersion;
use super::edit::{self, ConfigFacts};
use super::flavor::Kind;
use super::ownership::ConfigOwnership;
use super::{BinaryId, Containerd};

const ASK_TIMEOUT: Duration = Duration::from_secs(15);

impl Containerd {
    pub async fn facts(&self, owned: Option<&ConfigOwnership>) -> anyhow::Result<ConfigFacts> {
        let inputs = edit::inputs(&self.flavor, owned);
        let mut facts = ConfigFacts::default();
        for p in inputs.files {
            let content = self.read(&p)?;
            facts.files.insert(p, content);
        }
        for d in inputs.dirs {
            if self.host.resolve(&d)?.is_dir() {
                facts.dirs.insert(d);
            }
        }
        for f in owned.iter().flat_map(|o| o.files.keys()) {
            if let Ok(b) = std::fs::read_to_string(self.backup_path(f)) {
                facts.backups.insert(f.clone(), b);
            }
        }
        if let Some(bin) = self.flavor.binary.clone() {
            facts.containerd = self.version(&bin).await;
            if facts.file(&self.flavor.config).is_none() && self.flavor.kind == Kind::Containerd {
                let argv = [
                    bin.to_string_lossy().into_owned(),
                    "config".into(),
                    "default".into(),
                ];
                if let Ok(o) = self.exec.run_in_root(&argv, ASK_TIMEOUT).await {
                    facts.default_config = o.success.then_some(o.stdout);
                }
            }
        }
        Ok(facts)
    }

    fn read(&self, host_path: &Path) -> anyhow::Result<Option<String>> {
        let p = self.host.resolve(host_path)?;
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// `containerd --version` of the host's binary, asked again only when the binary changed.
    async fn version(&self, bin: &Path) -> Option<ContainerdVersion> {
        let meta = std::fs::metadata(self.host.resolve(bin).ok()?).ok()?;
        let id = BinaryId {
            path: bin.to_owned(),
            len: meta.len(),
            modified: meta.modified().ok()?,
        };
        if let Ok(cached) = self.version.lock() {
            if let Some((known, v)) = cached.as_ref().filter(|(known, _)| *known == id) {
                let _ = known;
                return *v;
            }
        }
        let argv = [bin.to_string_lossy().into_owned(), "--version".into()];
        let version = match self.exec.run_in_root(&argv, ASK_TIMEOUT).await {
            Ok(o) if o.success => ContainerdVersion::parse(&o.stdout),
            _ => None,
        };
        if version.is_none() {
            tracing::warn!(binary = %bin.display(), "could not tell the host's containerd version; runtime options are written the most conservative way");
        }
        if let Ok(mut cached) = self.version.lock() {
            *cached = Some((id, version));
        }
        version
    }
}
