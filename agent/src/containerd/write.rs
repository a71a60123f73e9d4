//! Writing a config edit: originals backed up once, drop-ins first, the file containerd reads validated
//! by the host's own containerd before it is replaced, every write atomic, and undone in reverse order
//! if a later one fails.

use anyhow::Context;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::edit::{ConfigEdit, FileWrite};
use super::ownership::ConfigOwnership;
use super::Containerd;
use crate::host::atomic;

impl Containerd {
    /// Prove the edit by containerd's effective config, then back up originals, write the drop-ins,
    /// then the config containerd reads. Returns the directories it had to create (host paths); on
    /// failure it removes them again.
    pub(super) async fn write_all(
        &self,
        edit: &ConfigEdit,
        previous: Option<&ConfigOwnership>,
    ) -> anyhow::Result<BTreeSet<PathBuf>> {
        if edit.changes() {
            self.prove(edit, previous).await?;
            crate::timeline::mark("validate");
        }
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
        let mut done: Vec<&FileWrite> = Vec::new();
        for w in &edit.writes {
            if let Err(e) = self.put(&w.path, w.after.as_deref(), created) {
                self.undo(&done);
                return Err(e);
            }
            done.push(w);
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

    pub(super) fn drop_backups(&self, edit: &ConfigEdit) {
        for w in &edit.writes {
            let _ = std::fs::remove_file(self.backup_path(&w.path));
        }
    }
}
