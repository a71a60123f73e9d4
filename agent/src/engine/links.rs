//! The runtime-name links of installed shims (`containerd.link_dir`), kept as the settings ask and
//! recorded in the state; and taking a shim's binary away, its link first.

use std::path::{Path, PathBuf};

use crate::artifact::link::{self, Linked};
use crate::artifact::InstalledShim;
use crate::settings::Shim;

use super::{Engine, State};

impl Engine {
    /// Made when `link_dir` is set, removed when it is not. Returns a note when the name is taken by a
    /// file the agent does not own.
    pub(super) fn sync_link(
        &self,
        shim: &Shim,
        state: &mut State,
    ) -> anyhow::Result<Option<String>> {
        let Some(rec) = state.shims.get(&shim.name).cloned() else {
            return Ok(None);
        };
        let wanted = self
            .settings
            .containerd
            .link_dir
            .as_ref()
            .and_then(|dir| link::shim_name_for(&shim.runtime_type).map(|n| dir.join(n)));
        if let Some(old) = rec.link.as_ref().filter(|l| Some(*l) != wanted.as_ref()) {
            link::remove(&self.host, old, &rec.binary_path)?;
            self.record_link(&shim.name, None, state)?;
        }
        let Some(wanted) = wanted else {
            return Ok(None);
        };
        let dir = wanted.parent().unwrap_or(Path::new("/"));
        let name = wanted.file_name().unwrap_or_default().to_string_lossy();
        match link::ensure(&self.host, dir, &name, &rec.binary_path)? {
            Linked::Ours(l) => {
                self.record_link(&shim.name, Some(l), state)?;
                Ok(None)
            }
            Linked::Taken(l) => Ok(Some(format!(
                "shim {}: {} exists and is not kwasm-agent's; left as it is (clients naming runtime {} get that file)",
                shim.name,
                l.display(),
                shim.runtime_type
            ))),
        }
    }

    fn record_link(
        &self,
        shim: &str,
        link: Option<PathBuf>,
        state: &mut State,
    ) -> anyhow::Result<()> {
        if let Some(rec) = state.shims.get_mut(shim) {
            if rec.link != link {
                rec.link = link;
                state.save(&self.layout.state_path())?;
            }
        }
        Ok(())
    }

    /// The links first, so no name ever points at a missing binary; then every version's file.
    pub(super) fn remove_binary(&self, rec: &InstalledShim) -> anyhow::Result<()> {
        if let Some(l) = &rec.link {
            link::remove(&self.host, l, &rec.binary_path)?;
        }
        crate::host::atomic::remove(&self.host.resolve(&rec.binary_path)?)?;
        for v in rec.version_path.iter().chain(&rec.retired) {
            self.remove_version(v)?;
        }
        Ok(())
    }

    /// A version's file and its directory (`versions/<id>/`, once empty).
    pub(super) fn remove_version(&self, host_path: &Path) -> anyhow::Result<()> {
        let real = self.host.resolve(host_path)?;
        crate::host::atomic::remove(&real)?;
        if let Some(dir) = real.parent() {
            // Only when empty: another shim's binary may share the version's directory.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}
