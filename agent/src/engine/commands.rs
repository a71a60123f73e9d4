//! The one-shot commands: load settings, run the engine, print for a person or as JSON.

use anyhow::{bail, Context};
use serde::Serialize;

use super::Engine;
use crate::artifact::digest::file_sha256;
use crate::cli::{Command, Common, Output, StatusArgs, Target};
use crate::settings::Settings;

pub async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Run(_) => {
            bail!("`run` (DaemonSet mode) is not built yet; use `apply` / `status` for now")
        }
        Command::Remove(_) => bail!("`remove` is not built yet"),
        Command::Apply(t) => apply(t).await,
        Command::Plan(t) => plan(t),
        Command::Status(s) => status(s),
    }
}

fn engine(c: &Common) -> anyhow::Result<Engine> {
    let settings = Settings::load(&c.config)?;
    Engine::new(settings, c.host_root.as_deref(), c.arch)
}

async fn apply(t: Target) -> anyhow::Result<()> {
    let engine = engine(&t.common)?;
    let outcomes = engine.apply(&t.shims).await?;
    let mut failed = Vec::new();
    for o in &outcomes {
        match &o.error {
            None => println!("{}: {}", o.name, o.result),
            Some(e) => {
                println!("{}: failed: {e}", o.name);
                failed.push(format!("{}: {e}", o.name));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} shims failed: {}",
            failed.len(),
            outcomes.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

fn plan(t: Target) -> anyhow::Result<()> {
    let engine = engine(&t.common)?;
    let state = engine.load_state()?;
    let plans = engine.plan(&t.shims, &state)?;
    println!("node architecture: {}", engine.arch);
    for p in &plans {
        println!("shim {}: {}", p.shim.name, p.step);
    }
    Ok(())
}

#[derive(Serialize)]
struct StatusReport {
    host_root: String,
    install_dir: String,
    arch: String,
    shims: Vec<ShimStatus>,
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
}

fn status(s: StatusArgs) -> anyhow::Result<()> {
    let engine = engine(&s.common)?;
    let state = engine.load_state().context("reading the state file")?;
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
                }
            })
            .collect(),
    };
    match s.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => {
            println!(
                "host root {}  install dir {}  arch {}",
                report.host_root, report.install_dir, report.arch
            );
            if report.shims.is_empty() {
                println!("no shims installed");
            }
            for sh in &report.shims {
                println!(
                    "shim {} {} ({}): {} sha256 {}{}",
                    sh.name,
                    sh.version,
                    sh.arch,
                    sh.binary_path,
                    sh.binary_sha256,
                    if sh.binary_intact {
                        ""
                    } else {
                        "  [binary missing or changed]"
                    }
                );
            }
        }
    }
    Ok(())
}
