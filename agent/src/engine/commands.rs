//! The one-shot commands: load settings, run the engine, print for a person or as JSON.

use anyhow::{bail, Context};
use serde::Serialize;

use super::Engine;
use crate::artifact::digest::file_sha256;
use crate::cli::{Command, Common, Output, StatusArgs, Target};
use crate::settings::Settings;

pub async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Run(c) => super::run::run(c).await,
        Command::Apply(t) => apply(t).await,
        Command::Remove(t) => remove(t).await,
        Command::Plan(t) => plan(t).await,
        Command::Status(s) => status(s).await,
    }
}

fn engine(c: &Common) -> anyhow::Result<Engine> {
    let settings = Settings::load(&c.config)?;
    Engine::new(settings, c.host_root.as_deref(), c.arch)
}

async fn apply(t: Target) -> anyhow::Result<()> {
    let engine = engine(&t.common)?;
    let report = engine.apply(&t.shims).await?;
    for o in &report.shims {
        match &o.error {
            None => println!("{}: {}", o.name, o.result),
            Some(e) => println!("{}: failed: {e}", o.name),
        }
    }
    if let Some(c) = &report.config {
        print_config(c);
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    let failed = report.failures();
    if !failed.is_empty() {
        bail!(
            "{} of {} shims failed: {}",
            failed.len(),
            report.shims.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

fn print_config(c: &super::configure::ConfigOutcome) {
    if c.changed_files.is_empty() {
        println!("containerd config: unchanged");
    } else {
        for f in &c.changed_files {
            println!("containerd config: wrote {}", f.display());
        }
    }
    println!("containerd: {}", c.restart);
    if let Some(l) = &c.loaded {
        println!(
            "containerd: CRI plugin lists handlers: {}",
            if l.is_empty() {
                "(none of ours)".to_owned()
            } else {
                l.join(", ")
            }
        );
    }
}

async fn remove(t: Target) -> anyhow::Result<()> {
    let engine = engine(&t.common)?;
    let report = engine.remove(&t.shims).await?;
    for r in &report.removed {
        println!("{r}: removed");
    }
    if let Some(c) = &report.config {
        print_config(c);
    }
    if report.removed.is_empty() && report.in_use.is_empty() {
        println!("nothing to remove");
    }
    if !report.in_use.is_empty() {
        let busy: Vec<String> = report
            .in_use
            .iter()
            .map(|(name, procs)| {
                let ids: Vec<String> = procs
                    .iter()
                    .map(|p| format!("pid {} ({})", p.pid, p.id.as_deref().unwrap_or("?")))
                    .collect();
                format!(
                    "{name} is in use by {} shim process(es): {}",
                    procs.len(),
                    ids.join(", ")
                )
            })
            .collect();
        for b in &busy {
            println!("{b}; left installed");
        }
        bail!(
            "not removed while containers run on them: {}",
            busy.join("; ")
        );
    }
    Ok(())
}

async fn plan(t: Target) -> anyhow::Result<()> {
    let engine = engine(&t.common)?;
    let plan = engine.plan(&t.shims).await?;
    println!("node architecture: {}", engine.arch);
    for p in &plan.shims {
        println!("shim {}: {}", p.shim.name, p.step);
    }
    match &plan.config {
        Ok(c) if !c.changes() => println!("containerd config: no change"),
        Ok(c) => {
            for w in &c.writes {
                let before = w.before.as_deref().unwrap_or("");
                let after = w.after.as_deref().unwrap_or("");
                let verb = match (&w.before, &w.after) {
                    (None, _) => "create",
                    (_, None) => "delete",
                    _ => "edit",
                };
                println!("containerd config: {verb} {}", w.path.display());
                let name = w.path.display().to_string();
                print!(
                    "{}",
                    similar::TextDiff::from_lines(before, after)
                        .unified_diff()
                        .context_radius(3)
                        .header(&name, &name)
                );
            }
        }
        Err(e) => println!("containerd config: cannot plan: {e:#}"),
    }
    if let Ok(c) = &plan.config {
        for n in &c.notes {
            println!("note: {n}");
        }
    }
    println!("restart containerd: {}", plan.restart);
    plan.config.map(|_| ())
}

#[derive(Serialize)]
struct StatusReport {
    host_root: String,
    install_dir: String,
    arch: String,
    shims: Vec<ShimStatus>,
    containerd: ContainerdStatus,
}

#[derive(Serialize)]
struct ShimStatus {
    name: String,
    version: String,
    arch: String,
    binary_path: String,
    binary_sha256: String,
    archive_sha256: String,
    source: String,
    installed_at: String,
    /// The binary on disk still has the digest recorded at install.
    binary_intact: bool,
    /// The agent's runtime table for this handler is in containerd's config.
    configured: bool,
    /// containerd's CRI plugin lists the handler with this binary (null: containerd not reachable).
    loaded: Option<bool>,
    /// The runtime-name link in `containerd.link_dir`, when the agent made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<String>,
}

#[derive(Serialize)]
struct ContainerdStatus {
    flavor: String,
    config: String,
    socket: String,
    unit: String,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    runtime_ready: Option<bool>,
    handlers_loaded: Vec<String>,
    files_owned: Vec<String>,
}

async fn status(s: StatusArgs) -> anyhow::Result<()> {
    let engine = engine(&s.common)?;
    let state = engine.load_state().context("reading the state file")?;
    let containerd = engine.containerd()?;
    let cri = containerd.cri_status().await;
    let owned = state.containerd.as_ref();
    let report = StatusReport {
        host_root: engine.host.root().display().to_string(),
        install_dir: engine.layout.host_dir.display().to_string(),
        arch: engine.arch.to_string(),
        shims: state
            .shims
            .values()
            .map(|r| {
                let on_disk = engine
                    .host
                    .resolve(&r.binary_path)
                    .ok()
                    .and_then(|p| file_sha256(&p).ok());
                ShimStatus {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    arch: r.arch.to_string(),
                    binary_path: r.binary_path.display().to_string(),
                    binary_sha256: r.binary_sha256.clone(),
                    archive_sha256: r.archive_sha256.clone(),
                    source: r.url.clone(),
                    installed_at: r.installed_at.clone(),
                    binary_intact: on_disk.as_deref() == Some(r.binary_sha256.as_str()),
                    configured: owned
                        .map(|o| o.handlers.contains_key(&r.name))
                        .unwrap_or(false),
                    loaded: cri.as_ref().ok().map(|c| c.lists(&r.name, &r.binary_path)),
                    link: r.link.as_ref().map(|l| l.display().to_string()),
                }
            })
            .collect(),
        containerd: ContainerdStatus {
            flavor: containerd.flavor.kind.name().into(),
            config: containerd.flavor.config.display().to_string(),
            socket: containerd.flavor.socket.display().to_string(),
            unit: containerd.flavor.unit.clone(),
            reachable: cri.is_ok(),
            error: cri.as_ref().err().map(|e| format!("{e:#}")),
            runtime_ready: cri.as_ref().ok().map(|c| c.runtime_ready),
            handlers_loaded: cri
                .as_ref()
                .map(|c| c.handlers.keys().cloned().collect())
                .unwrap_or_default(),
            files_owned: owned
                .map(|o| o.files.keys().map(|p| p.display().to_string()).collect())
                .unwrap_or_default(),
        },
    };
    match s.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print_status(&report),
    }
    Ok(())
}

fn print_status(r: &StatusReport) {
    println!(
        "host root {}  install dir {}  arch {}",
        r.host_root, r.install_dir, r.arch
    );
    let c = &r.containerd;
    println!(
        "containerd: {} config {} socket {} unit {}",
        c.flavor, c.config, c.socket, c.unit
    );
    match &c.error {
        None => println!(
            "containerd: reachable, runtime ready: {}, handlers loaded: {}",
            c.runtime_ready.unwrap_or(false),
            c.handlers_loaded.join(", ")
        ),
        Some(e) => println!("containerd: not reachable: {e}"),
    }
    for f in &c.files_owned {
        println!("config file changed by kwasm-agent: {f}");
    }
    if r.shims.is_empty() {
        println!("no shims installed");
    }
    for sh in &r.shims {
        let loaded = match sh.loaded {
            Some(true) => "loaded",
            Some(false) => "NOT loaded",
            None => "loaded: unknown",
        };
        println!(
            "shim {} {} ({}): {} sha256 {}  {}  {}{}",
            sh.name,
            sh.version,
            sh.arch,
            sh.binary_path,
            sh.binary_sha256,
            if sh.configured {
                "configured"
            } else {
                "NOT configured"
            },
            loaded,
            if sh.binary_intact {
                ""
            } else {
                "  [binary missing or changed]"
            }
        );
        if let Some(l) = &sh.link {
            println!("  linked as {l}");
        }
    }
}
