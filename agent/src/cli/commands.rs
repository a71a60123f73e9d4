//! Each command: load the settings, build the engine, run it, print the result, and turn what the
//! operator must act on into a non-zero exit.

use anyhow::bail;

use super::output;
use super::{Command, Common, Output, StatusArgs, Target};
use crate::engine::Engine;
use crate::settings::Settings;

pub async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Run(c) => crate::controller::run(c).await,
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
    output::apply(&report);
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

async fn remove(t: Target) -> anyhow::Result<()> {
    let engine = engine(&t.common)?;
    let report = engine.remove(&t.shims).await?;
    output::remove(&report);
    if !report.in_use.is_empty() {
        bail!(
            "not removed while containers run on them: {}",
            output::in_use(&report).join("; ")
        );
    }
    Ok(())
}

async fn plan(t: Target) -> anyhow::Result<()> {
    let engine = engine(&t.common)?;
    let requested = engine.settings.select(&t.shims)?;
    let facts = engine.facts(&requested).await?;
    let plan = engine.plan(&facts, &requested);
    output::plan(&engine, &plan);
    if let Err(e) = &plan.config {
        bail!("containerd's config cannot be planned: {e:#}");
    }
    let unavailable = plan.unavailable();
    if !unavailable.is_empty() {
        let why: Vec<String> = unavailable
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        bail!(
            "{} of {} shims cannot be installed: {}",
            why.len(),
            plan.shims.len(),
            why.join("; ")
        );
    }
    Ok(())
}

async fn status(s: StatusArgs) -> anyhow::Result<()> {
    let engine = engine(&s.common)?;
    let report = engine.status().await?;
    match s.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => output::status(&report),
    }
    Ok(())
}
