//! One reconcile of this node: provision what the Node asks for, or undo it when it stops asking (or
//! the chart is being uninstalled). Provisioning is claim (labels `false`) → act (the host engine) →
//! report (each shim's label `true` only once containerd proved its handler loaded); a failure stays
//! visible on the Node until it is fixed.

use anyhow::anyhow;
use k8s_openapi::api::core::v1::Node;

use super::context::Context;
use super::desired::{Desired, Uninstall};
use super::events::Reason;
use super::metrics::ShimInfo;
use super::node::{self, Report, ShimLabel};
use super::report::status_doc;
use crate::artifact::ArtifactStep;
use crate::containerd::Restart;
use crate::engine::{ApplyReport, Engine, HostFacts, HostPlan, State};
use crate::host::lock::HostLock;
use crate::node_contract::labels::{shim_ready_label, PROVISIONED_LABEL, STATUS_ANNOTATION};
use crate::node_contract::status::{Phase, StatusDoc};
use crate::node_contract::trigger::{annotation, label};
use crate::settings::RestartMethod;
use crate::timeline::mark;

#[tracing::instrument(name = "reconcile", skip_all, fields(node = %ctx.nodes.name, periodic))]
pub async fn reconcile(
    ctx: &Context,
    engine: &Engine,
    node: &Node,
    want: &Desired,
    periodic: bool,
) -> anyhow::Result<()> {
    if want.uninstall == Uninstall::Stale {
        node::clear_stale_uninstall(&ctx.nodes, node).await?;
    }
    if want.triggered {
        provision(ctx, engine, node, want, periodic).await
    } else {
        unprovision(ctx, engine, node, want.uninstall == Uninstall::Requested).await
    }
}

#[tracing::instrument(skip_all, fields(phase = "provision"))]
async fn provision(
    ctx: &Context,
    engine: &Engine,
    node: &Node,
    want: &Desired,
    periodic: bool,
) -> anyhow::Result<()> {
    let names = want.shims.clone().unwrap_or_else(|| engine.default_shims());
    let requested = engine.settings.select(&names);
    // Read without the host lock: a node with nothing to do never waits for another agent.
    let facts = engine
        .facts(requested.as_deref().unwrap_or_default())
        .await?;
    mark("facts");
    let requested = match requested {
        Ok(r) => r,
        Err(e) => {
            let annotation = &ctx.settings.trigger.shims_annotation;
            let failure = Failure::provisioning(e.context(format!("the node's {annotation}")));
            return fail(ctx, node, &facts.state, &[], failure).await;
        }
    };
    let plan = engine.plan(&facts, &requested);
    let extra = no_longer_requested(&facts.state, &names);
    let shims = readiness(engine, &facts.state, &names).await;
    mark("cri-status");
    let loaded = shims.iter().all(|s| s.ready);
    let shown_ready = label(node, PROVISIONED_LABEL) == Some("true")
        && shims
            .iter()
            .all(|s| label(node, &shim_ready_label(&s.name)) == Some("true"));
    if shown_ready && !plan.changes() && loaded && extra.is_empty() {
        remove_startup_taint(ctx, node).await?;
        return Ok(());
    }
    if shown_ready {
        report_drift(ctx, node, &plan, loaded, periodic).await;
    }
    let node = claim(ctx, engine, node, &facts.state, &plan, shims).await?;
    mark("claim");
    // The facts again, under the lock: another agent may have changed the host meanwhile.
    let lock = engine.lock().await?;
    mark("host-lock");
    let facts = engine.facts(&requested).await?;
    let plan = engine.plan(&facts, &requested);
    mark("facts-again");
    let extra = no_longer_requested(&facts.state, &names);
    match act(ctx, engine, &lock, plan, facts, &extra, &names).await {
        Ok((report, shims)) => report_provisioned(ctx, &node, &report, &shims).await,
        Err(e) => {
            let state = State::load(&engine.layout.state_path()).unwrap_or_default();
            let shims = readiness(engine, &state, &names).await;
            let failure = match e.downcast_ref::<StillInUse>() {
                Some(_) => Failure::remove_blocked(e),
                None => Failure::provisioning(e),
            };
            fail(ctx, &node, &state, &shims, failure).await
        }
    }
}

/// Shims the node no longer asks for (narrowed annotation, a deleted or re-scoped Shim object) that
/// running containers still use: they stay until those containers are gone.
#[derive(Debug, thiserror::Error)]
#[error(
    "not removing shims no longer requested while running containers use them: {0}; will retry"
)]
struct StillInUse(String);

fn busy_list(in_use: &[(String, Vec<crate::containerd::inuse::ShimUser>)]) -> String {
    let busy: Vec<String> = in_use
        .iter()
        .map(|(n, users)| {
            let list: Vec<String> = users.iter().map(|u| u.to_string()).collect();
            format!("{n} ({})", list.join(", "))
        })
        .collect();
    busy.join(", ")
}

/// Shims the agent installed that the Node no longer asks for (the shims annotation narrowed).
fn no_longer_requested(state: &State, names: &[String]) -> Vec<String> {
    state
        .shims
        .keys()
        .filter(|k| !names.contains(k))
        .cloned()
        .collect()
}

/// Each requested shim as the node should show it: ready when containerd's CRI plugin lists its
/// handler with the installed binary (one CRI call for all), and its version.
async fn readiness(engine: &Engine, state: &State, names: &[String]) -> Vec<ShimLabel> {
    let cri = engine.containerd.cri_status().await.ok();
    names
        .iter()
        .map(|n| {
            let installed = state.shims.get(n);
            ShimLabel {
                name: n.clone(),
                ready: match (&cri, installed) {
                    (Some(cri), Some(r)) => cri.lists(n, &r.binary_path),
                    _ => false,
                },
                version: installed
                    .map(|r| r.version.clone())
                    .or_else(|| engine.settings.shim(n).map(|s| s.version.clone()))
                    .unwrap_or_default(),
            }
        })
        .collect()
}

async fn report_drift(ctx: &Context, node: &Node, plan: &HostPlan, loaded: bool, periodic: bool) {
    let what = if plan.config.as_ref().map(|c| c.changes()).unwrap_or(true) {
        "containerd's config lost the agent's entries"
    } else if plan.changes() {
        "an installed shim binary is missing or changed"
    } else if !loaded {
        "containerd does not list every handler"
    } else {
        "the requested shims changed"
    };
    tracing::warn!(
        reason = what,
        periodic,
        "node drifted from its provisioned state; re-applying"
    );
    let drifted =
        plan.changes() || !loaded || plan.config.as_ref().map(|c| c.changes()).unwrap_or(true);
    if drifted {
        // A changed request is not drift: only the host moving under the agent counts.
        ctx.metrics.drift_repaired();
    }
    ctx.events
        .publish(node, Reason::DriftDetected, &format!("{what}; re-applying"))
        .await;
}

/// Label `false`, phase Provisioning, and each shim the plan changes not ready, before touching the
/// host — unless the last attempt failed: a retry keeps the failure visible instead of flapping back
/// to Provisioning.
async fn claim(
    ctx: &Context,
    engine: &Engine,
    node: &Node,
    state: &State,
    plan: &HostPlan,
    mut shims: Vec<ShimLabel>,
) -> anyhow::Result<Node> {
    let failed_before = label(node, PROVISIONED_LABEL) == Some("false")
        && matches!(
            StatusDoc::phase_in(annotation(node, STATUS_ANNOTATION)),
            Some(Phase::Failed | Phase::RemoveBlocked)
        );
    if failed_before {
        return Ok(node.clone());
    }
    for shown in shims.iter_mut() {
        let changes = plan
            .shims
            .iter()
            .any(|s| s.shim.name == shown.name && s.step != ArtifactStep::UpToDate);
        shown.ready &= !changes;
    }
    let doc = status_doc(state, Phase::Provisioning, None);
    let node = ctx
        .nodes
        .report(
            node,
            Report {
                provisioned: Some(false),
                status: Some(&doc),
                shims: &shims,
            },
        )
        .await?;
    let names: Vec<&str> = shims.iter().map(|s| s.name.as_str()).collect();
    ctx.events
        .publish(
            &node,
            Reason::Provisioning,
            &format!("installing shims {} for {}", names.join(", "), engine.arch),
        )
        .await;
    Ok(node)
}

/// Carry the plan out, take away shims no longer requested, and tell each shim's readiness: its
/// handler proven loaded (with `restart = "none"` handlers load at containerd's next start — not an
/// error, but not ready either).
async fn act(
    ctx: &Context,
    engine: &Engine,
    lock: &HostLock,
    plan: HostPlan,
    facts: HostFacts,
    extra: &[String],
    names: &[String],
) -> anyhow::Result<(ApplyReport, Vec<ShimLabel>)> {
    let report = engine.carry_out(lock, plan, facts).await?;
    ctx.metrics.count_apply(&report);
    if let Some(Restart::Restarted(how)) = report.config.as_ref().map(|c| &c.restart) {
        tracing::info!(how = %how, "restarted containerd");
    }
    let failures = report.failures();
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    let mut state = report.state.clone();
    if !extra.is_empty() {
        let removed = engine.remove_locked(lock, extra).await?;
        if !removed.in_use.is_empty() {
            return Err(StillInUse(busy_list(&removed.in_use)).into());
        }
        state = removed.state;
    }
    let shims = readiness(engine, &state, names).await;
    mark("cri-status");
    let deferred = engine.settings.containerd.restart == RestartMethod::None;
    let missing: Vec<&str> = shims
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    anyhow::ensure!(
        missing.is_empty() || deferred,
        "containerd does not list handler(s) {} after apply",
        missing.join(", ")
    );
    Ok((ApplyReport { state, ..report }, shims))
}

async fn report_provisioned(
    ctx: &Context,
    node: &Node,
    report: &ApplyReport,
    shims: &[ShimLabel],
) -> anyhow::Result<()> {
    let doc = status_doc(&report.state, Phase::Provisioned, None);
    let node = ctx
        .nodes
        .report(
            node,
            Report {
                provisioned: Some(shims.iter().all(|s| s.ready)),
                status: Some(&doc),
                shims,
            },
        )
        .await?;
    mark("report");
    ctx.metrics
        .shims_installed(report.state.shims.values().map(|s| ShimInfo {
            shim: s.name.clone(),
            version: s.version.clone(),
            loaded: u8::from(shims.iter().any(|l| l.name == s.name && l.ready)).to_string(),
        }));
    let installed: Vec<String> = report
        .state
        .shims
        .values()
        .map(|s| format!("{} {}", s.name, s.version))
        .collect();
    let ready: Vec<&str> = shims
        .iter()
        .filter(|s| s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let untainted = ready.len() == shims.len() && remove_startup_taint(ctx, &node).await?;
    let taint = &ctx.settings.trigger.startup_taint;
    ctx.events
        .publish(
            &node,
            Reason::Provisioned,
            &format!(
                "installed {}; containerd lists handlers {}{}",
                installed.join(", "),
                ready.join(", "),
                if untainted {
                    format!("; removed the startup taint {taint}")
                } else {
                    String::new()
                }
            ),
        )
        .await;
    Ok(())
}

/// The node was kept free of pods until it could run them all (the startup taint it was created
/// with): let them come. False when it has no such taint.
async fn remove_startup_taint(ctx: &Context, node: &Node) -> anyhow::Result<bool> {
    let taint = &ctx.settings.trigger.startup_taint;
    if taint.is_empty() {
        return Ok(false);
    }
    ctx.nodes.remove_taint(node, taint).await
}

/// What went wrong, as the Node shows it.
struct Failure {
    phase: Phase,
    reason: Reason,
    error: anyhow::Error,
}

impl Failure {
    fn provisioning(error: anyhow::Error) -> Self {
        Self {
            phase: Phase::Failed,
            reason: Reason::ProvisionFailed,
            error,
        }
    }

    fn remove_blocked(error: anyhow::Error) -> Self {
        Self {
            phase: Phase::RemoveBlocked,
            reason: Reason::RemoveBlocked,
            error,
        }
    }
}

/// A failure stays visible on the Node: label false, the status annotation with the error, a Warning
/// Event. The reconcile still fails, so it is retried with backoff.
async fn fail(
    ctx: &Context,
    node: &Node,
    state: &State,
    shims: &[ShimLabel],
    f: Failure,
) -> anyhow::Result<()> {
    let msg = format!("{:#}", f.error);
    let doc = status_doc(state, f.phase, Some(msg.clone()));
    let reported = ctx
        .nodes
        .report(
            node,
            Report {
                provisioned: Some(false),
                status: Some(&doc),
                shims,
            },
        )
        .await;
    ctx.events.publish(node, f.reason, &msg).await;
    ctx.metrics.failure_reason(f.reason.as_str());
    match reported {
        Ok(_) => Err(f.error),
        Err(e) => Err(f
            .error
            .context(format!("and reporting it on the node failed: {e:#}"))),
    }
}

/// Nothing on the Node: no label, no status annotation, no shim labels.
const CLEAR: Report<'static> = Report {
    provisioned: None,
    status: None,
    shims: &[],
};

/// The node stopped asking (or the chart is being uninstalled: `uninstalling`, which overrides
/// `keep_on_untrigger`): undo everything and clear the agent's labels and annotation.
#[tracing::instrument(skip_all, fields(phase = "remove"))]
async fn unprovision(
    ctx: &Context,
    engine: &Engine,
    node: &Node,
    uninstalling: bool,
) -> anyhow::Result<()> {
    let state = State::load(&engine.layout.state_path())?;
    let nothing_here = state.shims.is_empty() && state.containerd.is_none();
    if nothing_here || (ctx.settings.trigger.keep_on_untrigger && !uninstalling) {
        ctx.nodes.report(node, CLEAR).await?;
        return Ok(());
    }
    let doc = status_doc(&state, Phase::Removing, None);
    let removing = Report {
        provisioned: Some(false),
        status: Some(&doc),
        shims: &[],
    };
    let node = ctx.nodes.report(node, removing).await?;
    match engine.remove(&[]).await {
        Ok(r) if r.in_use.is_empty() => {
            ctx.metrics.shims_installed([]);
            let node = ctx.nodes.report(&node, CLEAR).await?;
            ctx.events
                .publish(
                    &node,
                    Reason::Removed,
                    &format!(
                        "removed shims {} and their containerd config",
                        r.removed.join(", ")
                    ),
                )
                .await;
            Ok(())
        }
        Ok(r) => {
            let failure = Failure::remove_blocked(anyhow!(
                "not removing shims still used by running containers: {}; will retry",
                busy_list(&r.in_use)
            ));
            fail(ctx, &node, &r.state, &[], failure).await
        }
        Err(e) => {
            ctx.events
                .publish(&node, Reason::RemoveFailed, &format!("{e:#}"))
                .await;
            ctx.metrics.failure_reason(Reason::RemoveFailed.as_str());
            Err(e)
        }
    }
}
