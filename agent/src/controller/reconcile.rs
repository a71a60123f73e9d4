//! One reconcile of this node: provision what the Node asks for, or undo it when it stops asking.
//! Provisioning is claim (label `false`) → act (the host engine) → report (label `true` only once
//! containerd proved the handlers loaded); a failure stays visible on the Node until it is fixed.

use std::collections::BTreeSet;

use anyhow::anyhow;
use k8s_openapi::api::core::v1::Node;

use super::context::Context;
use super::desired::{annotation, label, Desired};
use super::events::Reason;
use super::node::{Report, PROVISIONED_LABEL, STATUS_ANNOTATION};
use super::report::{Phase, StatusDoc};
use crate::engine::{ApplyReport, Engine, HostPlan, State};
use crate::host::lock::HostLock;
use crate::settings::RestartMethod;

pub async fn reconcile(
    ctx: &Context,
    engine: &Engine,
    node: &Node,
    want: &Desired,
    periodic: bool,
) -> anyhow::Result<()> {
    if want.triggered {
        provision(ctx, engine, node, want, periodic).await
    } else {
        unprovision(ctx, engine, node).await
    }
}

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
    let requested = match requested {
        Ok(r) => r,
        Err(e) => {
            let e = e.context(format!(
                "the node's {} annotation",
                ctx.settings.trigger.shims_annotation
            ));
            return fail(
                ctx,
                node,
                &facts.state,
                Phase::Failed,
                Reason::ProvisionFailed,
                e,
            )
            .await;
        }
    };
    let plan = engine.plan(&facts, &requested);
    let extra = no_longer_requested(&facts.state, &names);
    let loaded = all_loaded(engine, &facts.state, &names).await;
    let marked = label(node, PROVISIONED_LABEL) == Some("true");
    if marked && !plan.changes() && loaded && extra.is_empty() {
        return Ok(());
    }
    if marked {
        report_drift(ctx, node, &plan, loaded, periodic).await;
    }
    let node = claim(ctx, engine, node, &facts.state, &names).await?;
    // The facts again, under the lock: another agent may have changed the host meanwhile.
    let lock = engine.lock().await?;
    let facts = engine.facts(&requested).await?;
    let plan = engine.plan(&facts, &requested);
    let extra = no_longer_requested(&facts.state, &names);
    match act(ctx, engine, &lock, plan, facts, &extra, &names).await {
        Ok((report, provisioned)) => report_provisioned(ctx, &node, &report, provisioned).await,
        Err(e) => {
            let state = State::load(&engine.layout.state_path()).unwrap_or_default();
            fail(
                ctx,
                &node,
                &state,
                Phase::Failed,
                Reason::ProvisionFailed,
                e,
            )
            .await
        }
    }
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

/// Does containerd's CRI plugin list every requested handler with its installed binary?
async fn all_loaded(engine: &Engine, state: &State, names: &[String]) -> bool {
    match engine.containerd.cri_status().await {
        Ok(cri) => names.iter().all(|n| {
            state
                .shims
                .get(n)
                .is_some_and(|r| cri.lists(n, &r.binary_path))
        }),
        Err(_) => false,
    }
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
    ctx.events
        .publish(node, Reason::DriftDetected, &format!("{what}; re-applying"))
        .await;
}

/// Label `false` and phase Provisioning before touching the host — unless the last attempt failed:
/// a retry keeps the failure visible instead of flapping back to Provisioning.
async fn claim(
    ctx: &Context,
    engine: &Engine,
    node: &Node,
    state: &State,
    names: &[String],
) -> anyhow::Result<Node> {
    let failed_before = label(node, PROVISIONED_LABEL) == Some("false")
        && StatusDoc::phase_in(annotation(node, STATUS_ANNOTATION)) == Some(Phase::Failed);
    if failed_before {
        return Ok(node.clone());
    }
    let doc = StatusDoc::new(state, Phase::Provisioning, None);
    let node = ctx
        .nodes
        .report(
            node,
            Report {
                provisioned: Some(false),
                status: Some(&doc),
            },
        )
        .await?;
    ctx.events
        .publish(
            &node,
            Reason::Provisioning,
            &format!("installing shims {} for {}", names.join(", "), engine.arch),
        )
        .await;
    Ok(node)
}

/// Carry the plan out, take away shims no longer requested, and tell whether the node is ready: every
/// requested handler proven loaded (with `restart = "none"` they load at containerd's next start —
/// not an error, but not ready either).
async fn act(
    ctx: &Context,
    engine: &Engine,
    lock: &HostLock,
    plan: HostPlan,
    facts: crate::engine::HostFacts,
    extra: &[String],
    names: &[String],
) -> anyhow::Result<(ApplyReport, bool)> {
    let report = engine.carry_out(lock, plan, facts).await?;
    ctx.metrics.count_apply(&report);
    let failures = report.failures();
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    let mut state = report.state.clone();
    if !extra.is_empty() {
        let removed = engine.remove_locked(lock, extra).await?;
        if !removed.in_use.is_empty() {
            let busy: Vec<&String> = removed.in_use.iter().map(|(n, _)| n).collect();
            return Err(anyhow!(
                "shims no longer requested are still in use: {busy:?}"
            ));
        }
        state = removed.state;
    }
    let proven: BTreeSet<&String> = report
        .config
        .as_ref()
        .and_then(|c| c.loaded.as_ref())
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    let loaded =
        names.iter().all(|n| proven.contains(n)) || all_loaded(engine, &state, names).await;
    let deferred = engine.settings.containerd.restart == RestartMethod::None;
    anyhow::ensure!(
        loaded || deferred,
        "containerd does not list the handlers after apply"
    );
    Ok((ApplyReport { state, ..report }, loaded))
}

async fn report_provisioned(
    ctx: &Context,
    node: &Node,
    report: &ApplyReport,
    provisioned: bool,
) -> anyhow::Result<()> {
    let doc = StatusDoc::new(&report.state, Phase::Provisioned, None);
    let node = ctx
        .nodes
        .report(
            node,
            Report {
                provisioned: Some(provisioned),
                status: Some(&doc),
            },
        )
        .await?;
    let shims: Vec<String> = report
        .state
        .shims
        .values()
        .map(|s| format!("{} {}", s.name, s.version))
        .collect();
    let loaded = report
        .config
        .as_ref()
        .and_then(|c| c.loaded.clone())
        .unwrap_or_default();
    ctx.events
        .publish(
            &node,
            Reason::Provisioned,
            &format!(
                "installed {}; containerd lists handlers {}",
                shims.join(", "),
                loaded.join(", ")
            ),
        )
        .await;
    Ok(())
}

/// A failure stays visible on the Node: label false, the status annotation with the error, a Warning
/// Event. The reconcile still fails, so it is retried with backoff.
async fn fail(
    ctx: &Context,
    node: &Node,
    state: &State,
    phase: Phase,
    reason: Reason,
    error: anyhow::Error,
) -> anyhow::Result<()> {
    let msg = format!("{error:#}");
    let doc = StatusDoc::new(state, phase, Some(msg.clone()));
    let reported = ctx
        .nodes
        .report(
            node,
            Report {
                provisioned: Some(false),
                status: Some(&doc),
            },
        )
        .await;
    ctx.events.publish(node, reason, &msg).await;
    match reported {
        Ok(_) => Err(error),
        Err(e) => Err(error.context(format!("and reporting it on the node failed: {e:#}"))),
    }
}

async fn unprovision(ctx: &Context, engine: &Engine, node: &Node) -> anyhow::Result<()> {
    let state = State::load(&engine.layout.state_path())?;
    let marked =
        label(node, PROVISIONED_LABEL).is_some() || annotation(node, STATUS_ANNOTATION).is_some();
    let nothing_here = state.shims.is_empty() && state.containerd.is_none();
    if nothing_here || ctx.settings.trigger.keep_on_untrigger {
        if marked {
            ctx.nodes
                .report(
                    node,
                    Report {
                        provisioned: None,
                        status: None,
                    },
                )
                .await?;
        }
        return Ok(());
    }
    let doc = StatusDoc::new(&state, Phase::Removing, None);
    let node = ctx
        .nodes
        .report(
            node,
            Report {
                provisioned: Some(false),
                status: Some(&doc),
            },
        )
        .await?;
    match engine.remove(&[]).await {
        Ok(r) if r.in_use.is_empty() => {
            let node = ctx
                .nodes
                .report(
                    &node,
                    Report {
                        provisioned: None,
                        status: None,
                    },
                )
                .await?;
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
            let busy: Vec<String> = r
                .in_use
                .iter()
                .map(|(n, p)| format!("{n} ({} shim processes)", p.len()))
                .collect();
            let e = anyhow!(
                "not removing shims still used by running containers: {}; will retry",
                busy.join(", ")
            );
            fail(
                ctx,
                &node,
                &r.state,
                Phase::RemoveBlocked,
                Reason::RemoveBlocked,
                e,
            )
            .await
        }
        Err(e) => {
            ctx.events
                .publish(&node, Reason::RemoveFailed, &format!("{e:#}"))
                .await;
            Err(e)
        }
    }
}
