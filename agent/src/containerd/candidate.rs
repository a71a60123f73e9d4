//! Proving a config edit before any of it is written: the host's own containerd dumps its effective
//! config for the current files and for the candidate, and `effective::prove` compares the two. The
//! candidate is read from scratch copies beside the main config (`.NAME.kwasm-candidate`, names no
//! `*.toml` import matches), with the candidate's `imports` expanded to absolute paths and the
//! agent's drop-in pointed at its scratch copy, so the live files stay as they are until proven.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use toml_edit::{Array, DocumentMut};

use super::config::glob_match;
use super::edit::ConfigEdit;
use super::effective;
use super::ownership::ConfigOwnership;
use super::Containerd;
use crate::host::atomic;

const DUMP_TIMEOUT: Duration = Duration::from_secs(30);

/// The two dumps of a proven edit (for `plan` to show), or why there are none.
pub enum Dumps {
    Both {
        before: toml::Table,
        after: toml::Table,
    },
    Unavailable(String),
}

impl Containerd {
    /// containerd's effective config now and with `edit` carried out, each from the host's own
    /// binary; `Unavailable` when there is no binary to ask or nothing containerd reads changes.
    pub async fn effective_dumps(&self, edit: &ConfigEdit) -> anyhow::Result<Dumps> {
        let Some(bin) = self.flavor.binary.clone() else {
            return Ok(Dumps::Unavailable(
                "no containerd binary found on the host to dump its effective config (set containerd.binary); relying on the post-restart check".into(),
            ));
        };
        let Some((main, text)) = &edit.effective_config else {
            return Ok(Dumps::Unavailable(format!(
                "{} reads its runtimes from files it generates itself; relying on the post-restart check",
                self.flavor.kind.name()
            )));
        };
        let mut scratch = Scratch::default();
        let result = self.dump_both(&bin, main, text, edit, &mut scratch).await;
        for p in scratch.0 {
            let _ = std::fs::remove_file(p);
        }
        result
    }

    async fn dump_both(
        &self,
        bin: &Path,
        main: &Path,
        text: &str,
        edit: &ConfigEdit,
        scratch: &mut Scratch,
    ) -> anyhow::Result<Dumps> {
        // containerd with no config file runs on its built-in defaults: an empty file says the same
        // to every release (1.x refuses a --config that does not exist).
        let live = if self.host.resolve(main)?.exists() {
            main.to_owned()
        } else {
            self.scratch_file(main, "empty", "", scratch)?
        };
        let before = self
            .dump(bin, &live)
            .await
            .with_context(|| {
                format!(
                    "containerd refuses the current config {} ({}); the new config would carry the same fault: fix it first",
                    main.display(),
                    bin.display()
                )
            })?;
        let candidate = self.candidate_text(main, text, edit, scratch)?;
        let path = self.scratch_file(main, "candidate", &candidate, scratch)?;
        let after = self.dump(bin, &path).await.map_err(|e| {
            anyhow::anyhow!(
                "containerd refuses the new config for {} ({}): {e:#}",
                main.display(),
                bin.display()
            )
        })?;
        Ok(Dumps::Both {
            before: effective::parse_dump(&before)?,
            after: effective::parse_dump(&after)?,
        })
    }

    /// Refuses `edit` unless containerd's effective config with it shows exactly the agent's runtimes
    /// changed (see `effective::prove`). Runs before anything is written.
    pub(super) async fn prove(
        &self,
        edit: &ConfigEdit,
        previous: Option<&ConfigOwnership>,
    ) -> anyhow::Result<()> {
        let (before, after) = match self.effective_dumps(edit).await? {
            Dumps::Both { before, after } => (before, after),
            Dumps::Unavailable(why) => {
                tracing::warn!("{why}");
                return Ok(());
            }
        };
        check(edit, previous, &before, &after)
            .context("containerd's effective config does not prove the edit; nothing was written")
    }

    async fn dump(&self, bin: &Path, config: &Path) -> anyhow::Result<String> {
        let argv = [
            bin,
            Path::new("--config"),
            config,
            Path::new("config"),
            Path::new("dump"),
        ]
        .map(|a| a.to_string_lossy().into_owned());
        let out = self.exec.run_in_root(&argv, DUMP_TIMEOUT).await?;
        if !out.success {
            bail!("{}", out.tail(3));
        }
        Ok(out.stdout)
    }

    /// A scratch file beside `main` (host path), removed by the caller.
    fn scratch_file(
        &self,
        main: &Path,
        what: &str,
        text: &str,
        scratch: &mut Scratch,
    ) -> anyhow::Result<PathBuf> {
        let dir = main.parent().unwrap_or(Path::new("/"));
        let name = main
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let host_path = dir.join(format!(".{name}.kwasm-{what}"));
        let real = self.host.resolve(&host_path)?;
        std::fs::create_dir_all(self.host.resolve(dir)?)?;
        scratch.0.push(real.clone());
        atomic::write(&real, text.as_bytes(), 0o600)?;
        Ok(host_path)
    }

    /// The candidate main config with every import an absolute path (so its scratch copy reads the
    /// same files) and the agent's drop-in replaced by its candidate.
    fn candidate_text(
        &self,
        main: &Path,
        text: &str,
        edit: &ConfigEdit,
        scratch: &mut Scratch,
    ) -> anyhow::Result<String> {
        let mut doc: DocumentMut = text
            .parse()
            .with_context(|| format!("the candidate for {} is not TOML", main.display()))?;
        let Some(entries) = doc.get("imports").and_then(|i| i.as_array()) else {
            return Ok(text.to_owned());
        };
        let dir = main.parent().unwrap_or(Path::new("/"));
        let drop_in = match &edit.drop_in {
            Some((path, Some(content))) => Some((
                path.clone(),
                Some(self.scratch_file(main, "drop-in", content, scratch)?),
            )),
            Some((path, None)) => Some((path.clone(), None)),
            None => None,
        };
        let mut imports = Array::new();
        for entry in entries.iter().filter_map(|v| v.as_str()) {
            let full = dir.join(entry);
            for path in self.expand(&full, drop_in.as_ref())? {
                imports.push(path.to_string_lossy().into_owned());
            }
        }
        doc["imports"] = toml_edit::value(imports);
        Ok(doc.to_string())
    }

    /// One import entry as containerd reads it: a glob's matches in lexical order (a plain path stays
    /// as written, present or not), with the drop-in's live path swapped for its candidate.
    fn expand(
        &self,
        entry: &Path,
        drop_in: Option<&(PathBuf, Option<PathBuf>)>,
    ) -> anyhow::Result<Vec<PathBuf>> {
        let pattern = entry.to_string_lossy();
        let mut matches: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        if pattern.contains(['*', '?', '[']) {
            let dir = entry.parent().unwrap_or(Path::new("/"));
            if let Ok(list) = std::fs::read_dir(self.host.resolve(dir)?) {
                for e in list.flatten() {
                    let p = dir.join(e.file_name());
                    if glob_match(&pattern, &p.to_string_lossy()) {
                        matches.insert(p.clone(), p);
                    }
                }
            }
        } else {
            matches.insert(entry.to_owned(), entry.to_owned());
        }
        if let Some((live, candidate)) = drop_in {
            matches.remove(live);
            if let Some(c) = candidate
                .as_ref()
                .filter(|_| glob_match(&pattern, &live.to_string_lossy()))
            {
                matches.insert(live.clone(), c.clone());
            }
        }
        Ok(matches.into_values().collect())
    }
}

/// The scratch files made for one proof (real paths), removed once the dumps are taken.
#[derive(Default)]
struct Scratch(Vec<PathBuf>);

/// `effective::prove` for `edit`, given the agent's ownership before it.
pub fn check(
    edit: &ConfigEdit,
    previous: Option<&ConfigOwnership>,
    before: &toml::Table,
    after: &toml::Table,
) -> anyhow::Result<()> {
    let owned: BTreeSet<String> = previous
        .map(|o| o.handlers.keys().cloned().collect())
        .unwrap_or_default();
    let gone: Vec<String> = owned
        .iter()
        .filter(|h| !edit.written.contains_key(*h))
        .cloned()
        .collect();
    let ours: BTreeSet<String> = owned
        .into_iter()
        .chain(edit.written.keys().cloned())
        .collect();
    effective::prove(before, after, &edit.written, &gone, &ours)
}
