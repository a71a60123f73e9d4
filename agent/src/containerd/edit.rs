//! The config edit, computed without I/O: from the files as they are (read by `facts`), what the agent
//! owns, and the runtimes that should be configured, derive every file write and the new ownership
//! record. `kwasm-agent plan` prints these writes as diffs; `apply` and `remove` carry them out. The
//! files an edit may look at are declared here once (`inputs`), and `facts` reads exactly those.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use sha2::{Digest, Sha256};
use toml_edit::DocumentMut;

use super::config::{
    self, ConfigVersion, ContainerdVersion, CriSection, OptionsDelivery, RuntimeEntry,
};
use super::flavor::{Flavor, Kind};
use super::ownership::{ConfigOwnership, FileRecord, OwnedRuntime};
use super::template;

/// The files the planner may look at, as read from the host (None: absent).
#[derive(Debug, Clone, Default)]
pub struct ConfigFacts {
    pub files: BTreeMap<PathBuf, Option<String>>,
    pub dirs: BTreeSet<PathBuf>,
    /// Backups of originals the agent saved, by the host path they back up.
    pub backups: BTreeMap<PathBuf, String>,
    /// `containerd config default` from the host's binary, for hosts with no config file at all.
    pub default_config: Option<String>,
    /// The host's containerd release, when its binary could be asked.
    pub containerd: Option<ContainerdVersion>,
}

impl ConfigFacts {
    pub fn file(&self, p: &Path) -> Option<&str> {
        self.files.get(p).and_then(|c| c.as_deref())
    }
}

/// How the agent's runtime tables reach containerd on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Edit the config file itself (containerd 1.x, microk8s' template, or a config we create).
    InPlace { file: PathBuf },
    /// A file of our own in a directory containerd (or the distro) reads, plus an import line in
    /// `importer` when nothing there imports the file already.
    DropIn {
        file: PathBuf,
        importer: Option<PathBuf>,
        version: ConfigVersion,
    },
    /// k3s/rke2 without drop-in support: a block appended to the config template after the base.
    Template { file: PathBuf, rendered: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWrite {
    pub path: PathBuf,
    pub before: Option<String>,
    /// None: delete the file.
    pub after: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ConfigEdit {
    pub strategy: Strategy,
    pub version: ConfigVersion,
    /// In the order to carry them out (a drop-in before the import that names it; reversed on removal).
    pub writes: Vec<FileWrite>,
    pub ownership: Option<ConfigOwnership>,
    /// The config containerd reads, as it will be after the writes (validated before they are made).
    pub effective_config: Option<(PathBuf, String)>,
    /// Things the operator should know about what was (not) written, e.g. options this containerd
    /// cannot pass to a shim.
    pub notes: Vec<String>,
    /// The runtime table each wanted handler has after the edit (`runtime_type`, `options`): what
    /// containerd's effective config must then show.
    pub written: BTreeMap<String, toml::Table>,
    /// For a drop-in: its host path and its content after the edit (None: deleted).
    pub drop_in: Option<(PathBuf, Option<String>)>,
}

impl ConfigEdit {
    pub fn changes(&self) -> bool {
        !self.writes.is_empty()
    }
}

pub const DROP_IN_NAME: &str = "99-kwasm.toml";
/// The CRI config k0s generates: its `version` is the one k0s' containerd speaks.
const K0S_CRI: &str = "/run/k0s/containerd-cri.toml";

/// What `compute` may read from the host for a flavor: files (absent ones are facts too) and
/// directories whose existence matters.
pub struct Inputs {
    pub files: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
}

pub fn inputs(flavor: &Flavor, owned: Option<&ConfigOwnership>) -> Inputs {
    let main = flavor.config.clone();
    let dir = main.parent().unwrap_or(Path::new("/")).to_owned();
    let mut files = vec![main.clone()];
    let mut dirs = Vec::new();
    match flavor.kind {
        Kind::Containerd => files.push(dir.join("conf.d").join(DROP_IN_NAME)),
        Kind::K3s | Kind::Rke2 => {
            for d in ["config.toml.d", "config-v3.toml.d"] {
                files.push(dir.join(d).join(DROP_IN_NAME));
                dirs.push(dir.join(d));
            }
            files.push(dir.join("config.toml.tmpl"));
            files.push(dir.join("config-v3.toml.tmpl"));
        }
        Kind::K0s => files.push(PathBuf::from(K0S_CRI)),
        Kind::Microk8s => {}
    }
    // Whatever the agent wrote before (its flavor or paths may have changed since) is read too.
    files.extend(owned.iter().flat_map(|o| o.files.keys().cloned()));
    files.sort();
    files.dedup();
    Inputs { files, dirs }
}

pub fn strategy(flavor: &Flavor, facts: &ConfigFacts) -> anyhow::Result<(Strategy, ConfigVersion)> {
    let main = &flavor.config;
    match flavor.kind {
        Kind::Containerd => containerd_strategy(main, facts),
        Kind::K3s | Kind::Rke2 => rancher_strategy(flavor, facts),
        Kind::K0s => {
            // k0s merges drop-ins into the config it generates; that generated CRI config says which
            // version its containerd speaks.
            let v = facts
                .file(Path::new(K0S_CRI))
                .and_then(|t| t.parse::<DocumentMut>().ok())
                .and_then(|d| config::version(&d, main).ok())
                .unwrap_or(ConfigVersion(2));
            let file = main.clone();
            let (importer, version) = (None, v);
            Ok((
                Strategy::DropIn {
                    file,
                    importer,
                    version,
                },
                v,
            ))
        }
        Kind::Microk8s => {
            let Some(text) = facts.file(main) else {
                bail!("{} not found: is microk8s installed?", main.display());
            };
            let v = config::version(&config::parse(text, main)?, main)?.check()?;
            Ok((Strategy::InPlace { file: main.clone() }, v))
        }
    }
}

/// Plain containerd: 2.x merges imported files per plugin, so a drop-in (and an import line) when the
/// file speaks version 3+; the file itself otherwise, or a new one on its release's defaults.
fn containerd_strategy(
    main: &Path,
    facts: &ConfigFacts,
) -> anyhow::Result<(Strategy, ConfigVersion)> {
    let Some(text) = facts.file(main) else {
        let v = match (facts.containerd, &facts.default_config) {
            (Some(c), _) if c.major >= 2 => ConfigVersion(3),
            (_, Some(d)) => config::version(&config::parse(d, Path::new("containerd config default"))?, main)?,
            _ => bail!(
                "{} does not exist and the host's containerd could not be asked for its defaults; create the file or set containerd.binary",
                main.display()
            ),
        };
        return Ok((
            Strategy::InPlace {
                file: main.to_owned(),
            },
            v,
        ));
    };
    let doc = config::parse(text, main)?;
    let v = config::version(&doc, main)?.check()?;
    if config::cri_disabled(&doc) {
        bail!(
            "{} disables the CRI plugin (Docker's bundled containerd?): Kubernetes does not run pods through it; unsupported",
            main.display()
        );
    }
    if !v.merges_imports() {
        return Ok((
            Strategy::InPlace {
                file: main.to_owned(),
            },
            v,
        ));
    }
    let dir = main.parent().unwrap_or(Path::new("/"));
    let drop_in = Strategy::DropIn {
        file: dir.join("conf.d").join(DROP_IN_NAME),
        importer: Some(main.to_owned()),
        version: v,
    };
    Ok((drop_in, v))
}

/// k3s and rke2 regenerate config.toml at every start: a drop-in where their release reads one,
/// else a block in the template after the base.
fn rancher_strategy(
    flavor: &Flavor,
    facts: &ConfigFacts,
) -> anyhow::Result<(Strategy, ConfigVersion)> {
    let main = &flavor.config;
    let Some(rendered) = facts.file(main) else {
        bail!(
            "{} not found: has {} started on this node yet?",
            main.display(),
            flavor.kind.name()
        );
    };
    let v = config::version(&config::parse(rendered, main)?, main)?.check()?;
    let dir = main.parent().unwrap_or(Path::new("/"));
    let v3dir = dir.join("config-v3.toml.d");
    let v2dir = dir.join("config.toml.d");
    let drop_in_dir = if v.merges_imports() && facts.dirs.contains(&v3dir) {
        Some(v3dir)
    } else {
        facts.dirs.contains(&v2dir).then_some(v2dir)
    };
    if let Some(d) = drop_in_dir {
        let (file, importer, version) = (d.join(DROP_IN_NAME), None, v);
        return Ok((
            Strategy::DropIn {
                file,
                importer,
                version,
            },
            v,
        ));
    }
    let name = if v.merges_imports() {
        "config-v3.toml.tmpl"
    } else {
        "config.toml.tmpl"
    };
    let template = Strategy::Template {
        file: dir.join(name),
        rendered: main.clone(),
    };
    Ok((template, v))
}

/// Compute the writes that make the host's config hold exactly `desired` (owned handlers not in it are
/// removed; when nothing stays owned every trace is removed, restoring originals byte for byte when
/// nobody edited them since).
pub fn compute(
    flavor: &Flavor,
    facts: &ConfigFacts,
    owned: Option<&ConfigOwnership>,
    desired: &[RuntimeEntry],
) -> anyhow::Result<ConfigEdit> {
    let (strategy, version) = strategy(flavor, facts)?;
    if flavor.kind == Kind::Microk8s {
        confined_to_microk8s(desired)?;
    }
    let delivery = OptionsDelivery::for_host(facts.containerd, version);
    let notes = options_not_written(delivery, facts.containerd, desired);
    let mut p = Planner {
        facts,
        owned_handlers: owned.map(|o| o.handlers.clone()).unwrap_or_default(),
        records: owned.map(|o| o.files.clone()).unwrap_or_default(),
        writes: Vec::new(),
        version,
        delivery,
        written: BTreeMap::new(),
        drop_in: None,
    };
    let effective = match &strategy {
        Strategy::InPlace { file } => {
            let after = p.in_place(file, desired)?;
            after.map(|a| (file.clone(), a))
        }
        Strategy::DropIn {
            file,
            importer,
            version,
        } => p.drop_in(file, importer.as_deref(), *version, desired)?,
        Strategy::Template { file, rendered } => p.template(file, rendered, desired)?,
    };
    let ownership = ownership(flavor.kind, version, desired, &p.records);
    Ok(ConfigEdit {
        strategy,
        version,
        writes: p.writes,
        ownership,
        effective_config: effective,
        notes,
        written: p.written,
        drop_in: p.drop_in,
    })
}

/// microk8s' strictly confined containerd runs no binary outside its snap's common directory.
fn confined_to_microk8s(desired: &[RuntimeEntry]) -> anyhow::Result<()> {
    match desired
        .iter()
        .find(|e| !e.binary.starts_with("/var/snap/microk8s/common"))
    {
        Some(e) => bail!(
            "microk8s' strictly confined containerd only runs binaries under /var/snap/microk8s/common; {} is outside it: set host.install_dir to e.g. /var/snap/microk8s/common/kwasm",
            e.binary.display()
        ),
        None => Ok(()),
    }
}

/// What the operator should hear when this containerd cannot pass a runtime's options to its shim.
fn options_not_written(
    delivery: OptionsDelivery,
    containerd: Option<ContainerdVersion>,
    desired: &[RuntimeEntry],
) -> Vec<String> {
    if delivery != OptionsDelivery::Dropped {
        return Vec::new();
    }
    let release = containerd
        .map(|v| format!("{}.{}", v.major, v.minor))
        .unwrap_or_else(|| "version unknown, config version 2".into());
    desired
        .iter()
        .filter(|e| e.options.as_ref().is_some_and(|o| !o.is_empty()))
        .map(|e| format!(
            "runtime {:?}: options not written: this containerd ({release}) passes no runtime options to non-runc shims (1.7 and later do)",
            e.handler
        ))
        .collect()
}

/// What the agent owns after the edit: the handlers it configures and the files it touched.
fn ownership(
    flavor: Kind,
    version: ConfigVersion,
    desired: &[RuntimeEntry],
    records: &BTreeMap<PathBuf, FileRecord>,
) -> Option<ConfigOwnership> {
    let handlers: BTreeMap<String, OwnedRuntime> = desired
        .iter()
        .map(|e| {
            let owned = OwnedRuntime {
                runtime_type: e.runtime_type.clone(),
                runtime_path: e.binary.clone(),
            };
            (e.handler.clone(), owned)
        })
        .collect();
    (!handlers.is_empty() || !records.is_empty()).then(|| ConfigOwnership {
        flavor,
        version,
        handlers,
        files: records.clone(),
        created_dirs: Default::default(),
    })
}

struct Planner<'a> {
    facts: &'a ConfigFacts,
    owned_handlers: BTreeMap<String, OwnedRuntime>,
    records: BTreeMap<PathBuf, FileRecord>,
    writes: Vec<FileWrite>,
    version: ConfigVersion,
    delivery: OptionsDelivery,
    written: BTreeMap<String, toml::Table>,
    drop_in: Option<(PathBuf, Option<String>)>,
}

pub fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl Planner<'_> {
    /// Record a write (none when nothing changes) and keep the file's ownership record current.
    fn write(
        &mut self,
        path: &Path,
        before: Option<&str>,
        after: Option<String>,
        record: Option<FileRecord>,
    ) {
        match record {
            Some(mut r) => {
                r.pristine = match self.records.get(path) {
                    None => true,
                    Some(old) => {
                        old.pristine
                            && before.map(sha256).as_deref() == Some(old.sha256_written.as_str())
                    }
                };
                if let Some(a) = &after {
                    r.sha256_written = sha256(a);
                }
                self.records.insert(path.to_owned(), r);
            }
            None => {
                self.records.remove(path);
            }
        }
        if before != after.as_deref() {
            self.writes.push(FileWrite {
                path: path.to_owned(),
                before: before.map(Into::into),
                after,
            });
        }
    }

    /// The original bytes, when the file is exactly as the agent last left it (nobody edited it since).
    fn restorable(&self, path: &Path, current: Option<&str>) -> Option<Option<String>> {
        let rec = self.records.get(path)?;
        let cur = current?;
        if !rec.pristine || sha256(cur) != rec.sha256_written {
            return None;
        }
        if rec.created {
            return Some(None);
        }
        self.facts.backups.get(path).map(|b| Some(b.clone()))
    }

    /// Apply the runtime table changes to a document; refuse handlers someone else configured.
    fn edit_runtimes(
        &mut self,
        doc: &mut DocumentMut,
        file: &Path,
        desired: &[RuntimeEntry],
        section: CriSection,
    ) -> anyhow::Result<()> {
        let inherit = config::default_systemd_cgroup(doc, section);
        self.remove_owned_elsewhere(doc, desired, section)?;
        let existing = config::runtimes(doc, section);
        let indent = config::runtime_indent(doc, section);
        for e in desired {
            let table = config::runtime_table(e, self.delivery, inherit, &indent);
            self.written
                .insert(e.handler.clone(), config::values(&table));
            match existing.get(&e.handler) {
                Some(cur) if config::same_runtime(cur, &table) => {}
                Some(cur)
                    if !self.owned_handlers.contains_key(&e.handler)
                        && !points_into(cur, &e.binary) =>
                {
                    bail!(
                        "runtime handler {:?} is already configured in {} (runtime_type {}) by someone else; remove it there or give the shim another name",
                        e.handler,
                        file.display(),
                        cur.get("runtime_type").and_then(|t| t.as_str()).unwrap_or("?")
                    );
                }
                _ => config::put_runtime(doc, section, table, &e.handler)?,
            }
        }
        Ok(())
    }

    /// Takes out the agent's own tables that should not stay: handlers no longer wanted, and any
    /// copy of a wanted one outside `section` (an earlier release put runtimes where a containerd
    /// 2.x reading a `version = 2` file with 2.x names never looked; they move to where it looks).
    fn remove_owned_elsewhere(
        &self,
        doc: &mut DocumentMut,
        desired: &[RuntimeEntry],
        section: CriSection,
    ) -> anyhow::Result<()> {
        for s in CriSection::ALL {
            for (h, table) in config::runtimes(doc, s) {
                let owned = self.owned_handlers.get(&h);
                let wanted = desired.iter().find(|e| e.handler == h);
                let ours = owned.is_some_and(|o| points_into(&table, &o.runtime_path))
                    || wanted.is_some_and(|e| points_into(&table, &e.binary));
                let stays = wanted.is_some() && s == section;
                let gone = owned.is_some() && wanted.is_none() && s == section;
                if (ours && !stays) || gone {
                    config::remove_runtime(doc, s, &h)?;
                }
            }
        }
        Ok(())
    }

    fn in_place(
        &mut self,
        file: &Path,
        desired: &[RuntimeEntry],
    ) -> anyhow::Result<Option<String>> {
        let current = self.facts.file(file);
        if desired.is_empty() {
            if let Some(orig) = self.restorable(file, current) {
                self.write(file, current, orig.clone(), None);
                return Ok(orig);
            }
        }
        let (base, created) = match current {
            Some(c) => (
                c.to_owned(),
                self.records.get(file).map(|r| r.created).unwrap_or(false),
            ),
            None if desired.is_empty() => return Ok(None),
            None => (self.base_for_new_file(), true),
        };
        let mut doc = config::parse(&base, file)?;
        let section = CriSection::for_document(&doc, self.version, self.facts.containerd)?;
        self.edit_runtimes(&mut doc, file, desired, section)?;
        let after = doc.to_string();
        let touched = self.records.contains_key(file) || current != Some(after.as_str());
        let record = (!desired.is_empty() && touched).then(|| FileRecord {
            created,
            ..Default::default()
        });
        self.write(file, current, Some(after.clone()), record);
        Ok(Some(after))
    }

    fn base_for_new_file(&self) -> String {
        match (&self.facts.default_config, self.version.0) {
            // On containerd 1.x a config that lacks the default runtime stops containerd (kata#3229):
            // start from the binary's own defaults.
            (Some(d), v) if v < 3 => d.clone(),
            (_, v) => format!("version = {v}\n"),
        }
    }

    fn drop_in(
        &mut self,
        file: &Path,
        importer: Option<&Path>,
        version: ConfigVersion,
        desired: &[RuntimeEntry],
    ) -> anyhow::Result<Option<(PathBuf, String)>> {
        let current = self.facts.file(file);
        if current.is_some()
            && !self.records.contains_key(file)
            && !current.map(is_ours).unwrap_or(false)
        {
            bail!(
                "{} exists and was not written by kwasm-agent; not overwriting it",
                file.display()
            );
        }
        let drop_in = self.drop_in_content(importer, version, desired)?;
        self.drop_in = Some((file.to_owned(), drop_in.clone()));
        let mut order = Vec::new();
        // The drop-in first, then the import naming it; on the way out, the import goes first.
        let dropin_rec = drop_in.as_ref().map(|_| FileRecord {
            created: true,
            ..Default::default()
        });
        let importer_write = match importer {
            Some(imp) => self.importer_edit(imp, file, desired.is_empty())?,
            None => None,
        };
        if desired.is_empty() {
            if let Some(w) = importer_write {
                order.push(w);
            }
            order.push((file.to_owned(), current.map(Into::into), None, None));
        } else {
            order.push((
                file.to_owned(),
                current.map(Into::into),
                drop_in.clone(),
                dropin_rec,
            ));
            if let Some(w) = importer_write {
                order.push(w);
            }
        }
        let mut effective = None;
        for (path, before, after, rec) in order {
            if Some(path.as_path()) == importer {
                effective = after.clone().map(|a| (path.clone(), a));
            }
            self.write(&path, before.as_deref(), after, rec);
        }
        Ok(effective.or_else(|| {
            importer.and_then(|i| self.facts.file(i).map(|t| (i.to_owned(), t.to_owned())))
        }))
    }

    /// The drop-in's text (None: no runtime left, the file goes). It speaks the root config's version
    /// and section names: containerd refuses a drop-in whose version is higher than the root's
    /// (containerd#12891).
    fn drop_in_content(
        &mut self,
        importer: Option<&Path>,
        version: ConfigVersion,
        desired: &[RuntimeEntry],
    ) -> anyhow::Result<Option<String>> {
        if desired.is_empty() {
            return Ok(None);
        }
        let main_doc = importer
            .and_then(|i| self.facts.file(i))
            .and_then(|t| t.parse::<DocumentMut>().ok())
            .unwrap_or_default();
        let section = CriSection::for_document(&main_doc, version, self.facts.containerd)?;
        let inherit = config::default_systemd_cgroup(&main_doc, section);
        let block = block_text(section, self.delivery, desired, inherit, &mut self.written)?;
        Ok(Some(drop_in_text(version, block)))
    }

    /// The import line in the main config: added if nothing imports the drop-in yet, removed with it.
    #[allow(clippy::type_complexity)]
    fn importer_edit(
        &mut self,
        importer: &Path,
        drop_in: &Path,
        removing: bool,
    ) -> anyhow::Result<Option<(PathBuf, Option<String>, Option<String>, Option<FileRecord>)>> {
        let current = self.facts.file(importer).map(str::to_owned);
        let rec = self.records.get(importer).cloned();
        if removing {
            let Some(rec) = rec else { return Ok(None) };
            if let Some(orig) = self.restorable(importer, current.as_deref()) {
                return Ok(Some((importer.to_owned(), current, orig, None)));
            }
            let Some(cur) = &current else { return Ok(None) };
            let mut doc = config::parse(cur, importer)?;
            if let Some(entry) = &rec.import_entry {
                config::remove_import(&mut doc, entry, rec.created_imports_key);
            }
            return Ok(Some((
                importer.to_owned(),
                current.clone(),
                Some(doc.to_string()),
                None,
            )));
        }
        let cur = current
            .clone()
            .ok_or_else(|| anyhow!("{} disappeared", importer.display()))?;
        let mut doc = config::parse(&cur, importer)?;
        if rec.is_some() || config::imports_cover(&doc, importer, drop_in) {
            return Ok(rec.map(|r| {
                (
                    importer.to_owned(),
                    current.clone(),
                    current.clone(),
                    Some(r),
                )
            }));
        }
        let entry = drop_in.to_string_lossy().into_owned();
        let created_imports_key = config::add_import(&mut doc, &entry)?;
        let record = FileRecord {
            created: false,
            import_entry: Some(entry),
            created_imports_key,
            ..Default::default()
        };
        Ok(Some((
            importer.to_owned(),
            current,
            Some(doc.to_string()),
            Some(record),
        )))
    }

    fn template(
        &mut self,
        file: &Path,
        rendered: &Path,
        desired: &[RuntimeEntry],
    ) -> anyhow::Result<Option<(PathBuf, String)>> {
        for e in desired {
            if e.binary.starts_with("/opt/kwasm/bin") {
                bail!(
                    "k3s/rke2 add runtimes themselves for shims they find in /opt/kwasm/bin, which would duplicate handler {:?} in the rendered config; set host.install_dir to another path (for example /var/lib/kwasm) on these nodes",
                    e.handler
                );
            }
        }
        let current = self.facts.file(file);
        let rendered_text = self.facts.file(rendered).unwrap_or_default().to_owned();
        let rendered_doc = config::parse(&rendered_text, rendered)?;
        let section = CriSection::for_document(&rendered_doc, self.version, self.facts.containerd)?;
        let inherit = config::default_systemd_cgroup(&rendered_doc, section);
        let existing = config::runtimes(&rendered_doc, section);
        for e in desired {
            if existing.contains_key(&e.handler) && !self.owned_handlers.contains_key(&e.handler) {
                bail!(
                    "runtime handler {:?} is already in {} (added by the distribution's shim auto-detection or by hand); remove it there or give the shim another name",
                    e.handler,
                    rendered.display()
                );
            }
        }
        let created = self
            .records
            .get(file)
            .map(|r| r.created)
            .unwrap_or(current.is_none());
        let block = (!desired.is_empty())
            .then(|| block_text(section, self.delivery, desired, inherit, &mut self.written))
            .transpose()?;
        let after = template::set_block(current, block.as_deref(), created);
        let rec = after
            .as_ref()
            .filter(|_| !desired.is_empty())
            .map(|_| FileRecord {
                created,
                ..Default::default()
            });
        self.write(file, current, after, rec);
        // What containerd will read after k3s renders: the current rendering (without any old block of
        // ours) plus the new block.
        let base = template::strip_block(&rendered_text);
        Ok(Some((
            rendered.to_owned(),
            format!(
                "{base}{}",
                block.map(|b| format!("\n{b}")).unwrap_or_default()
            ),
        )))
    }
}

/// A table that already points at our binary is ours (written by a run killed before it saved state,
/// or by an agent release that named the binary in `runtime_path`).
fn points_into(t: &toml_edit::Table, path: &Path) -> bool {
    let path = path.to_string_lossy();
    ["runtime_type", "runtime_path"]
        .iter()
        .any(|k| t.get(k).and_then(|v| v.as_str()) == Some(&*path))
}

const DROP_IN_HEADER: &str =
    "# Managed by kwasm-agent: rewritten on apply, deleted by `kwasm-agent remove`.\n";

fn is_ours(text: &str) -> bool {
    text.starts_with(DROP_IN_HEADER)
}

fn block_text(
    section: CriSection,
    delivery: OptionsDelivery,
    desired: &[RuntimeEntry],
    inherit: Option<bool>,
    written: &mut BTreeMap<String, toml::Table>,
) -> anyhow::Result<String> {
    let mut doc = DocumentMut::new();
    for e in desired {
        let mut t = config::runtime_table(e, delivery, inherit, "");
        written.insert(e.handler.clone(), config::values(&t));
        t.decor_mut().set_prefix("\n");
        config::put_runtime(&mut doc, section, t, &e.handler)?;
    }
    Ok(doc.to_string().trim_start().to_owned())
}

fn drop_in_text(version: ConfigVersion, block: String) -> String {
    format!("{DROP_IN_HEADER}version = {}\n\n{block}", version.0)
}

#[cfg(test)]
#[path = "edit_tests.rs"]
mod tests;
