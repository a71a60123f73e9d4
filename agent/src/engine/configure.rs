//! Carrying out a containerd config plan on the host: read the facts, back up originals, validate the
//! candidate with the host's own containerd, write atomically, restart when needed, prove the handlers
//! loaded — and put everything back when containerd does not come back healthy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::containerd::change::{self, ConfigFacts, ConfigPlan, FileWrite, DROP_IN_NAME};
use crate::containerd::config::{ContainerdVersion, RuntimeEntry};
use crate::containerd::cri::{self, CriStatus};
use crate::containerd::flavor::{self, Flavor};
use crate::containerd::ownership::ConfigOwnership;
use crate::containerd::restart::{self, Action};
use crate::host::exec::HostExec;
use crate::host::state::State;
use crate::host::{atomic, HostRoot, InstallLayout};
use crate::settings::ContainerdSettings;

pub struct Containerd {
    host: HostRoot,
    layout: InstallLayout,
    settings: ContainerdSettings,
    exec: HostExec,
    pub flavor: Flavor,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigOutcome {
    pub changed_files: Vec<PathBuf>,
    pub restart: String,
    /// Handlers containerd reported loaded after the change (None: not asked).
    pub loaded: Option<Vec<String>>,
}

impl Containerd {
    pub fn new(
        host: &HostRoot,
        layout: &InstallLayout,
        settings: &ContainerdSettings,
    ) -> anyhow::Result<Self> {
        let flavor = flavor::detect(host, settings)?;
        Ok(Self {
            host: host.clone(),
            layout: layout.clone(),
            settings: settings.clone(),
            exec: HostExec::new(host),
            flavor,
        })
    }

    pub fn socket(&self) -> anyhow::Result<PathBuf> {
        self.host.resolve(&self.flavor.socket)
    }

    pub async fn cri_status(&self) -> anyhow::Result<CriStatus> {
        cri::status(&self.socket()?).await
    }

    fn backup_path(&self, host_path: &Path) -> PathBuf {
        let name = host_path
            .to_string_lossy()
            .trim_start_matches('/')
            .replace('/', "%");
        self.layout.backup_dir().join(name)
    }

    fn read(&self, host_path: &Path) -> anyhow::Result<Option<String>> {
        let p = self.host.resolve(host_path)?;
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Every file the planner may need, read from the host.
    pub async fn facts(&self, owned: Option<&ConfigOwnership>) -> anyhow::Result<ConfigFacts> {
        let main = self.flavor.config.clone();
        let dir = main.parent().unwrap_or(Path::new("/")).to_owned();
        let mut paths = vec![
            main.clone(),
            dir.join("conf.d").join(DROP_IN_NAME),
            dir.join("config.toml.d").join(DROP_IN_NAME),
            dir.join("config-v3.toml.d").join(DROP_IN_NAME),
            dir.join("config.toml.tmpl"),
            dir.join("config-v3.toml.tmpl"),
            PathBuf::from("/run/k0s/containerd-cri.toml"),
        ];
        paths.extend(owned.iter().flat_map(|o| o.files.keys().cloned()));
        let mut facts = ConfigFacts::default();
        for p in paths {
            let content = self.read(&p)?;
            facts.files.insert(p, content);
        }
        for d in ["config.toml.d", "config-v3.toml.d"] {
            let hd = dir.join(d);
            if self.host.resolve(&hd)?.is_dir() {
                facts.dirs.insert(hd);
            }
        }
        for f in owned.iter().flat_map(|o| o.files.keys()) {
            if let Ok(b) = std::fs::read_to_string(self.backup_path(f)) {
                facts.backups.insert(f.clone(), b);
            }
        }
        if let Some(bin) = &self.flavor.binary {
            facts.containerd = self.containerd_version(bin).await;
            if facts.file(&main).is_none() && self.flavor.kind == flavor::Kind::Containerd {
                let argv = [
                    bin.to_string_lossy().into_owned(),
                    "config".into(),
                    "default".into(),
                ];
                if let Ok(o) = self.exec.run(&argv, Duration::from_secs(15)).await {
                    facts.default_config = o.success.then_some(o.stdout);
                }
            }
        }
        Ok(facts)
    }

    /// `containerd --version` of the host's binary. Its answer changes only with the binary, so it
    /// is asked once per binary (path, size, mtime) rather than on every reconcile.
    async fn containerd_version(&self, bin: &Path) -> Option<ContainerdVersion> {
        type Cached = Option<(
            (PathBuf, u64, std::time::SystemTime),
            Option<ContainerdVersion>,
        )>;
        static CACHE: std::sync::Mutex<Cached> = std::sync::Mutex::new(None);
        let meta = std::fs::metadata(self.host.resolve(bin).ok()?).ok()?;
        let key = (bin.to_owned(), meta.len(), meta.modified().ok()?);
        if let Some((k, v)) = CACHE.lock().ok()?.as_ref() {
            if *k == key {
                return *v;
            }
        }
        let argv = [bin.to_string_lossy().into_owned(), "--version".into()];
        let version = match self.exec.run(&argv, Duration::from_secs(15)).await {
            Ok(o) if o.success => ContainerdVersion::parse(&o.stdout),
            _ => None,
        };
        if version.is_none() {
            tracing::warn!(binary = %bin.display(), "could not tell the host's containerd version; assuming the most conservative option encoding");
        }
        *CACHE.lock().ok()? = Some((key, version));
        version
    }

    pub async fn plan(
        &self,
        owned: Option<&ConfigOwnership>,
        desired: &[RuntimeEntry],
    ) -> anyhow::Result<ConfigPlan> {
        let facts = self.facts(owned).await?;
        change::plan(&self.flavor, &facts, owned, desired)
    }

    /// Carry out `plan`; on success `state.containerd` holds the new ownership (saved to `state_path`).
    pub async fn carry_out(
        &self,
        plan: &ConfigPlan,
        state: &mut State,
        state_path: &Path,
        removing: &[String],
    ) -> anyhow::Result<ConfigOutcome> {
        let expected: BTreeMap<String, PathBuf> = plan
            .ownership
            .as_ref()
            .map(|o| {
                o.handlers
                    .iter()
                    .map(|(h, r)| (h.clone(), r.runtime_path.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let previous = state.containerd.clone();
        self.write_all(plan).await?;
        if state.containerd != plan.ownership {
            state.containerd = plan.ownership.clone();
            state.save(state_path)?;
        }

        let loaded = if plan.changes() {
            None
        } else {
            self.cri_status()
                .await
                .ok()
                .map(|st| expected.iter().all(|(h, p)| st.lists(h, p)))
        };
        let action = restart::decide(
            &self.settings.restart,
            self.flavor.kind,
            &self.flavor.unit,
            plan.changes(),
            loaded,
        );
        let changed_files = plan.writes.iter().map(|w| w.path.clone()).collect();
        let must_prove = !matches!(action, Action::Skip(_))
            || self.flavor.kind.reloads_itself() && plan.changes();
        if !must_prove {
            let reason = match &action {
                Action::Skip(r) => r.clone(),
                _ => unreachable!(),
            };
            if plan.changes() {
                tracing::warn!(reason = %reason, "config changed but containerd was not restarted; the handlers load at its next start");
            }
            return Ok(ConfigOutcome {
                changed_files,
                restart: format!("not restarted: {reason}"),
                loaded: None,
            });
        }
        tracing::info!(action = ?action, "restarting containerd");
        match self.restart_and_prove(&action, &expected, removing).await {
            Ok(st) => {
                let loaded: Vec<String> = expected
                    .keys()
                    .filter(|h| st.handlers.contains_key(*h))
                    .cloned()
                    .collect();
                tracing::info!(handlers = ?loaded, "containerd is back and its CRI plugin lists the handlers");
                if plan.ownership.is_none() {
                    self.drop_backups(plan);
                }
                Ok(ConfigOutcome {
                    changed_files,
                    restart: describe(&action),
                    loaded: Some(loaded),
                })
            }
            Err(err) => {
                let rollback = self.roll_back(plan, &action).await;
                state.containerd = previous;
                state.save(state_path)?;
                match rollback {
                    Ok(()) => Err(err.context("containerd did not come back healthy with the new config; the previous config was restored and containerd restarted")),
                    Err(rb) => Err(err.context(format!("containerd did not come back healthy with the new config, and restoring the previous config failed too: {rb:#}"))),
                }
            }
        }
    }

    async fn restart_and_prove(
        &self,
        action: &Action,
        expected: &BTreeMap<String, PathBuf>,
        absent: &[String],
    ) -> anyhow::Result<CriStatus> {
        restart::run(action, &self.exec, self.settings.timeout).await?;
        let res = cri::wait_for(&self.socket()?, expected, absent, self.settings.timeout).await;
        match (res, action) {
            (Ok(st), _) => Ok(st),
            (Err(e), Action::Systemd { unit }) => Err(anyhow!(
                "{e:#}{}",
                restart::journal_tail(&self.exec, unit).await
            )),
            (Err(e), _) => Err(e),
        }
    }

    async fn roll_back(&self, plan: &ConfigPlan, action: &Action) -> anyhow::Result<()> {
        for w in plan.writes.iter().rev() {
            self.put(&w.path, w.before.as_deref())?;
        }
        tracing::warn!("previous containerd config restored; restarting containerd again");
        restart::run(action, &self.exec, self.settings.timeout).await?;
        cri::wait_for(
            &self.socket()?,
            &BTreeMap::new(),
            &[],
            self.settings.timeout,
        )
        .await
        .map(|_| ())
        .context("containerd is not healthy even with the previous config")
    }

    /// Back up originals, write the drop-ins, validate the config containerd will read, then write it.
    async fn write_all(&self, plan: &ConfigPlan) -> anyhow::Result<()> {
        for w in &plan.writes {
            if let Some(before) = &w.before {
                let b = self.backup_path(&w.path);
                if !b.exists() {
                    self.layout.ensure_dirs()?;
                    atomic::write(&b, before.as_bytes(), 0o600)
                        .with_context(|| format!("backing up {}", w.path.display()))?;
                }
            }
        }
        let effective = plan.effective_config.as_ref().map(|(p, _)| p.clone());
        let mut done: Vec<&FileWrite> = Vec::new();
        for w in plan
            .writes
            .iter()
            .filter(|w| Some(&w.path) != effective.as_ref())
        {
            if let Err(e) = self.put(&w.path, w.after.as_deref()) {
                self.undo(&done);
                return Err(e);
            }
            done.push(w);
        }
        if let Some((path, text)) = &plan.effective_config {
            if let Err(e) = self.validate(path, text).await {
                self.undo(&done);
                return Err(e);
            }
        }
        for w in plan
            .writes
            .iter()
            .filter(|w| Some(&w.path) == effective.as_ref())
        {
            if let Err(e) = self.put(&w.path, w.after.as_deref()) {
                self.undo(&done);
                return Err(e);
            }
        }
        Ok(())
    }

    fn undo(&self, done: &[&FileWrite]) {
        for w in done.iter().rev() {
            if let Err(e) = self.put(&w.path, w.before.as_deref()) {
                tracing::error!(file = %w.path.display(), error = %format!("{e:#}"), "could not undo a config write");
            }
        }
    }

    fn put(&self, host_path: &Path, content: Option<&str>) -> anyhow::Result<()> {
        let p = self.host.resolve(host_path)?;
        match content {
            Some(c) => {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                atomic::replace_keeping_mode(&p, c.as_bytes())
                    .with_context(|| format!("writing {}", host_path.display()))
            }
            None => atomic::remove(&p),
        }
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
        let out = self.exec.run(&argv, Duration::from_secs(30)).await;
        let _ = std::fs::remove_file(&real);
        let out = out?;
        if !out.success {
            bail!(
                "containerd refuses the new config for {} ({}): {}",
                host_path.display(),
                argv[0],
                out.tail(3)
            );
        }
        Ok(())
    }

    fn drop_backups(&self, plan: &ConfigPlan) {
        for w in &plan.writes {
            let _ = std::fs::remove_file(self.backup_path(&w.path));
        }
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::Skip(r) => format!("not restarted: {r}"),
        Action::Systemd { unit } => format!("restarted (systemctl restart {unit})"),
        Action::Argv(v) => format!("restarted ({})", v.join(" ")),
    }
}
