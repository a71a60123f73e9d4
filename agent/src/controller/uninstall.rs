//! `kwasm-agent uninstall`, run once for the whole cluster (the chart's pre-delete hook) while the
//! agents still run: it asks every node that asked for shims to undo everything (annotation
//! `kwasm.sh/uninstall`, the time it asked), and waits until each node's agent reports it clean —
//! configs restored, binaries gone, labels and status annotation cleared. A node whose shims still
//! run pods stays blocked, and the command says which and why.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::Api;

use crate::node_contract::labels::{PROVISIONED_LABEL, STATUS_ANNOTATION};
use crate::node_contract::status::StatusDoc;
use crate::node_contract::trigger::{annotation, asks_for_shims, label};
use crate::node_contract::uninstall_request::{request_value, UNINSTALL_ANNOTATION};
use crate::settings::Settings;

const POLL: Duration = Duration::from_secs(2);
/// A node whose agent was about to provision when asked may show its marks only a moment later.
const SETTLE: Duration = Duration::from_secs(6);

pub async fn uninstall(config: &Path, timeout: Duration) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let client = crate::kube_client::client("uninstall", settings.agent.api_read_timeout).await?;
    let api: Api<Node> = Api::all(client);
    let asked_at = request_value(std::time::SystemTime::now(), timeout);
    let started = Instant::now();
    let mut asked: BTreeMap<String, bool> = BTreeMap::new();
    let mut last_reason: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let settled = started.elapsed() >= SETTLE;
        let nodes = api
            .list(&ListParams::default())
            .await
            .context("listing nodes")?;
        for n in &nodes.items {
            let name = n.metadata.name.clone().unwrap_or_default();
            if !asked.contains_key(&name) && (marked(n) || asks_for_shims(n, &settings.trigger)) {
                ask(&api, &name, &asked_at).await?;
                println!("asked the agent on node {name} to remove its shims");
                asked.insert(name, false);
            }
        }
        let mut blocked = Vec::new();
        for n in &nodes.items {
            let name = n.metadata.name.clone().unwrap_or_default();
            if let Some(clean) = asked.get_mut(&name) {
                if !marked(n) {
                    if !*clean {
                        println!("node {name}: clean");
                    }
                    *clean = true;
                    if settled && annotation(n, UNINSTALL_ANNOTATION).is_some() {
                        // The agent that cleaned it stays clean; nothing of this command stays behind.
                        unask(&api, &name).await?;
                    }
                } else {
                    *clean = false;
                    let shown = why_not_clean(n, last_reason.entry(name.clone()).or_default());
                    blocked.push(format!("{name} ({shown})"));
                }
            }
        }
        if blocked.is_empty() && settled {
            println!("every node is clean ({} asked)", asked.len());
            return Ok(());
        }
        if started.elapsed() >= timeout {
            bail!(
                "{} node(s) still hold shims after {}: {}. Remove the WebAssembly pods running there and uninstall again, or uninstall without hooks (helm uninstall --no-hooks) to leave the nodes provisioned",
                blocked.len(),
                humantime::format_duration(timeout),
                blocked.join("; ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What a node that is not clean yet says about it. A blocked node retries, and shows its transient
/// phase while it does: the reason it was blocked (kept in `last_reason`) is the news, not the retry.
fn why_not_clean(n: &Node, last_reason: &mut String) -> String {
    let status = annotation(n, STATUS_ANNOTATION).unwrap_or("");
    let Some(doc) = serde_json::from_str::<StatusDoc>(status).ok() else {
        return "not reported yet".into();
    };
    let phase = format!("{:?}", doc.phase);
    match doc.error {
        Some(e) => {
            *last_reason = format!("{phase}: {e}");
            last_reason.clone()
        }
        None if last_reason.is_empty() => phase,
        None => format!("{last_reason}; {phase} again now"),
    }
}

async fn ask(api: &Api<Node>, name: &str, at: &str) -> anyhow::Result<()> {
    let patch = serde_json::json!({ "metadata": { "annotations": { UNINSTALL_ANNOTATION: at } } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating node {name}"))?;
    Ok(())
}

async fn unask(api: &Api<Node>, name: &str) -> anyhow::Result<()> {
    let patch =
        serde_json::json!({ "metadata": { "annotations": { UNINSTALL_ANNOTATION: null } } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("clearing {UNINSTALL_ANNOTATION} on node {name}"))?;
    Ok(())
}

/// The agent's marks: the provisioned label, a shim label, or the status annotation.
fn marked(n: &Node) -> bool {
    label(n, PROVISIONED_LABEL).is_some()
        || annotation(n, STATUS_ANNOTATION).is_some()
        || n.metadata
            .labels
            .iter()
            .flatten()
            .any(|(k, _)| k.starts_with("kwasm.sh/shim.") || k.starts_with("kwasm.sh/version."))
}
