//! Each command: load the settings, build the engine, run it, print the result, and turn what the
//! operator must act on into a non-zero exit.

use anyhow::bail;

use super::output;
use super::{Command, HostArgs, Output, SettingsArg, StatusArgs, Target};
use crate::artifact::{step, ArtifactFacts, ArtifactStep};
use crate::containerd::candidate;
use crate::engine::Engine;
use crate::settings::Settings;

pub async fn dispatch(cmd: Command) -> anyhow::Result<()> {
    // Each command's future is boxed: the node controller's nests deeply (reconcile → engine →
    // containerd, each step a traced span), and computing one enum of all of them inline exceeds
    // rustc's query depth in the binary crate.
    match cmd {
        Command::Run(c) => {
            Box::pin(crate::controller::run(
                &c.settings.config,
                c.host_root,
                c.arch,
            ))
            .await
        }
        Command::Apply(t) => Box::pin(apply(t)).await,
        Command::Remove(t) => Box::pin(remove(t)).await,
        Command::Plan(t) => Box::pin(plan(t)).await,
        Command::Status(s) => Box::pin(status(s)).await,
        Command::Check(c) => check(c),
        Command::Uninstall(u) => {
            Box::pin(crate::controller::uninstall(&u.settings.config, u.timeout)).await
        }
        Command::Pin(p) => Box::pin(super::pin::pin(p)).await,
        Command::Catalog(c) => Box::pin(crate::catalog::run(&c.config)).await,
        Command::ImportShim(a) => super::import::import_shim(a),
    }
}

/// Stricter than loading: every shim is installable as written on every architecture it lists —
/// the same decision `apply` makes (pinned unless unverified downloads are allowed, a URL scheme the
/// settings allow after mirrors), taken for a host that has nothing yet.
fn check(c: SettingsArg) -> anyhow::Result<()> {
    let settings = Settings::load(&c.config)?;
    let origin = c.config.display();
    for (i, shim) in settings.shims.iter().enumerate() {
        if shim.platforms.is_empty() {
            bail!("settings file {origin}: key `shims[{i}].platforms`: shim {:?} has no platform; it can be installed nowhere", shim.name);
        }
        for (j, p) in shim.platforms.iter().enumerate() {
            let fresh = ArtifactFacts::default();
            if let ArtifactStep::Unavailable(why) =
                step::decide(shim, p.arch, &settings.artifacts, &fresh)
            {
                bail!("settings file {origin}: key `shims[{i}].platforms[{j}]`: {why}");
            }
        }
    }
    output::check(&settings);
    Ok(())
}

fn engine(c: &HostArgs) -> anyhow::Result<Engine> {
    let settings = Settings::load(&c.settings.config)?;
    Engine::new(settings, c.host_root.as_deref(), c.arch)
}

async fn apply(t: Target) -> anyhow::Result<()> {
    let engine = engine(&t.host)?;
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
    let engine = engine(&t.host)?;
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
    let engine = engine(&t.host)?;
    let requested = engine.settings.select(&t.shims)?;
    let facts = engine.facts(&requested).await?;
    let plan = engine.plan(&facts, &requested);
    output::plan(&engine, &plan);
    let config = match &plan.config {
        Ok(c) => c,
        Err(e) => bail!("containerd's config cannot be planned: {e:#}"),
    };
    if config.changes() {
        let dumps = engine.containerd.effective_dumps(config).await?;
        let owned = facts.state.containerd.as_ref();
        output::effective(&dumps, |before, after| {
            candidate::check(config, owned, before, after)
        })?;
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
    let engine = engine(&s.host)?;
    let report = engine.status().await?;
    match s.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => output::status(&report),
    }
    Ok(())
}
