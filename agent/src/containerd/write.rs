//! Writing a config edit: originals backed up once, drop-ins first, the file containerd reads validated
//! by the host's own containerd before it is replaced, every write atomic, and undone in reverse order
//! if a later one fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use super::edit::{ConfigEdit, FileWrite};
use super::Containerd;
use crate::host::atomic;

impl Containerd {
    /// Back up originals, write the drop-ins, validate the config containerd will read, then write it.
    /// Returns the directories it had to create (host paths); on failure it removes them again.
    pub(super) async fn write_all(&self, edit: &ConfigEdit) -> anyhow::Result<BTreeSet<PathBuf>> {
        let mut created = BTreeSet::new();
        let result = self.write_each(edit, &mut created).await;
        if result.is_err() {
            self.prune_dirs(&created);
        }
        result.map(|()| created)
    }

    async fn write_each(
        &self,
        edit: &ConfigEdit,
        created: &mut BTreeSet<PathBuf>,
    ) -> anyhow::Result<()> {
        for w in &edit.writes {
            if let Some(before) = &w.before {
                let b = self.backup_path(&w.path);
                if !b.exists() {
                    self.layout.ensure_dirs()?;
                    atomic::write(&b, before.as_bytes(), 0o600)
                        .with_context(|| format!("backing up {}", w.path.display()))?;
                }
            }
        }
        let effective = edit.effective_config.as_ref().map(|(p, _)| p.clone());
        let is_effective = |w: &&FileWrite| Some(&w.path) == effective.as_ref();
        let mut done: Vec<&FileWrite> = Vec::new();
        for w in edit.writes.iter().filter(|w| !is_effective(w)) {
            if let Err(e) = self.put(&w.path, w.after.as_deref(), created) {
                self.undo(&done);
                return Err(e);
            }
            done.push(w);
        }
        if let Some((path, text)) = &edit.effective_config {
            if let Err(e) = self.validate(path, text).await {
                self.undo(&done);
                return Err(e);
            }
            crate::clock::mark("validate");
        }
        for w in edit.writes.iter().filter(is_effective) {
            if let Err(e) = self.put(&w.path, w.after.as_deref(), created) {
                self.undo(&done);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Put back what `writes` changed, last first, and remove the directories made for them.
    pub(super) fn restore(
        &self,
        writes: &[FileWrite],
        made: &BTreeSet<PathBuf>,
    ) -> anyhow::Result<()> {
        let mut again = BTreeSet::new();
        for w in writes.iter().rev() {
            self.put(&w.path, w.before.as_deref(), &mut again)?;
        }
        self.prune_dirs(made);
        Ok(())
    }

    /// Removes each of `dirs` (host paths) that is empty, deepest first; returns those still there.
    pub(super) fn prune_dirs(&self, dirs: &BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
        dirs.iter()
            .rev()
            .filter(|d| match self.host.resolve(d) {
                Ok(p) => p.exists() && std::fs::remove_dir(&p).is_err(),
                Err(_) => false,
            })
            .cloned()
            .collect()
    }

    fn undo(&self, done: &[&FileWrite]) {
        let mut again = BTreeSet::new();
        for w in done.iter().rev() {
            if let Err(e) = self.put(&w.path, w.before.as_deref(), &mut again) {
                tracing::error!(file = %w.path.display(), error = %format!("{e:#}"), "could not undo a config write");
            }
        }
    }

    fn put(
        &self,
        host_path: &Path,
        content: Option<&str>,
        created: &mut BTreeSet<PathBuf>,
    ) -> anyhow::Result<()> {
        let p = self.host.resolve(host_path)?;
        match content {
            Some(c) => {
                if let Some(parent) = host_path.parent() {
                    created.extend(self.make_dirs(parent)?);
                }
                atomic::replace_keeping_mode(&p, c.as_bytes())
                    .with_context(|| format!("writing {}", host_path.display()))
            }
            None => atomic::remove(&p),
        }
    }

    /// Creates the missing directories of `host_dir`, outermost first; returns those it created.
    fn make_dirs(&self, host_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let mut missing = Vec::new();
        let mut d = Some(host_dir);
        while let Some(dir) = d {
            if self.host.resolve(dir)?.exists() {
                break;
            }
            missing.push(dir.to_owned());
            d = dir.parent();
        }
        missing.reverse();
        for dir in &missing {
            let p = self.host.resolve(dir)?;
            match std::fs::create_dir(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| format!("creating {}", p.display()))
                }
                _ => {}
            }
        }
        Ok(missing)
    }

    /// The host's containerd parses the candidate exactly as it would at start (`config dump`), so a
    /// file it would refuse never becomes the live config.
    async fn validate(&self, host_path: &Path, text: &str) -> anyhow::Result<()> {
        let Some(bin) = &self.flavor.binary else {
            tracing::warn!("no containerd binary found on the host to validate the config with (set containerd.binary); relying on the post-restart check");
            return Ok(());
        };
        let dir = host_path.parent().unwrap_or(Path::new("/"));
        let name = host_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let candidate = dir.join(format!(".{name}.kwasm-candidate"));
        let real = self.host.resolve(&candidate)?;
        std::fs::create_dir_all(self.host.resolve(dir)?)?;
        atomic::write(&real, text.as_bytes(), 0o600)?;
        let argv = vec![
            bin.to_string_lossy().into_owned(),
            "--config".into(),
            candidate.to_string_lossy().into_owned(),
            "config".into(),
            "dump".into(),
        ];
        let out = self.exec.run_in_root(&argv, Duration::from_secs(30)).await;
        let _ = std::fs::remove_file(&real);
        let out = out?;
        if !out.success {
            bail!(
                "containerd refuses the new config for {} ({}): {}",
                host_path.display(),
                bin.display(),
                out.tail(3)
            );
        }
        Ok(())
    }

    pub(super) fn drop_backups(&self, edit: &ConfigEdit) {
        for w in &edit.writes {
            let _ = std::fs::remove_file(self.backup_path(&w.path));
        }
    }
}
