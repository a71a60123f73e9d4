//! A Shim's status as the nodes tell it: which nodes should have the shim, which run its version
//! with the handler proven loaded (the readiness and version labels the agents set), which failed
//! (the status annotation's phase) and why. Counts only: the status stays small on any fleet.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::arch::Arch;
use crate::crd::{Shim, ShimStatus};
use crate::node_contract::labels::{shim_ready_label, shim_version_label, STATUS_ANNOTATION};
use crate::node_contract::status::{Phase, StatusDoc};
use crate::node_contract::trigger::{meta_asks_for_shims, named_shims};
use crate::node_contract::uninstall_request::UNINSTALL_ANNOTATION;
use crate::settings::{self, TriggerSettings};

/// How many failed nodes a condition or an Event names.
const NAMED_FAILURES: usize = 3;

#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    pub nodes: u32,
    pub ready: u32,
    pub failed: u32,
    pub versions: BTreeMap<String, u32>,
    /// (node, its error), the first few by node name.
    pub failures: Vec<(String, String)>,
}

/// The nodes that should have `entry` (asking for shims, selected, the shims annotation naming it
/// when present, an architecture it has a platform for) and how they are doing.
pub fn tally<'a>(
    shim: &Shim,
    entry: &settings::Shim,
    nodes: impl Iterator<Item = &'a ObjectMeta>,
    t: &TriggerSettings,
) -> Tally {
    let (ready_key, version_key) = (
        shim_ready_label(&entry.name),
        shim_version_label(&entry.name),
    );
    let mut out = Tally::default();
    let no_keys = BTreeMap::new();
    for meta in nodes {
        let labels = meta.labels.as_ref().unwrap_or(&no_keys);
        let annotations = meta.annotations.as_ref().unwrap_or(&no_keys);
        let wanted = meta_asks_for_shims(meta, t)
            && !annotations.contains_key(UNINSTALL_ANNOTATION)
            && shim.selects(labels)
            && annotations
                .get(&t.shims_annotation)
                .is_none_or(|list| named_shims(list).any(|n| n == entry.name))
            && labels
                .get("kubernetes.io/arch")
                .and_then(|a| a.parse::<Arch>().ok())
                .is_none_or(|a| entry.platform(a).is_some());
        if !wanted {
            continue;
        }
        out.nodes += 1;
        let version = labels.get(&version_key);
        if let Some(v) = version {
            *out.versions.entry(v.clone()).or_default() += 1;
        }
        let ready = labels.get(&ready_key).map(String::as_str) == Some("true")
            && version == Some(&entry.version);
        if ready {
            out.ready += 1;
            continue;
        }
        let doc = annotations
            .get(STATUS_ANNOTATION)
            .and_then(|a| serde_json::from_str::<StatusDoc>(a).ok());
        if let Some(doc) = doc.filter(|d| d.phase == Phase::Failed) {
            out.failed += 1;
            let name = meta.name.clone().unwrap_or_default();
            out.failures.push((name, doc.error.unwrap_or_default()));
        }
    }
    out.failures.sort();
    out.failures.truncate(NAMED_FAILURES);
    out
}

/// Why a Shim is not followed at all, or its RuntimeClass not kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// The agents leave the object out of their catalog (invalid, or the settings file wins).
    NotFollowed(String),
    /// A RuntimeClass of that name exists and is not this Shim's.
    RuntimeClassTaken(String),
}

/// The status to write: `previous` keeps each condition's transition time while it holds.
pub fn status(
    shim: &Shim,
    tally: &Tally,
    problem: Option<&Problem>,
    previous: Option<&ShimStatus>,
) -> ShimStatus {
    let generation = shim.metadata.generation;
    let conditions = conditions(&shim.spec.version, tally, problem)
        .into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            keep_transition_time(c, previous)
        })
        .collect();
    ShimStatus {
        observed_generation: generation,
        runtime_class: shim.runtime_class_name(),
        nodes: tally.nodes,
        ready: tally.ready,
        failed: tally.failed,
        ready_summary: format!("{}/{}", tally.ready, tally.nodes),
        versions: tally.versions.clone(),
        conditions,
    }
}

/// Ready, Progressing, Degraded.
fn conditions(version: &str, tally: &Tally, problem: Option<&Problem>) -> [Condition; 3] {
    let (n, r, f) = (tally.nodes, tally.ready, tally.failed);
    let ready = match problem {
        Some(Problem::NotFollowed(why)) => cond("Ready", false, "NotFollowed", why.clone()),
        _ if r == n => cond(
            "Ready",
            true,
            "AllNodesReady",
            format!("{r} of {n} nodes run {version}"),
        ),
        _ => cond(
            "Ready",
            false,
            "NodesNotReady",
            format!("{r} of {n} nodes run {version}"),
        ),
    };
    let converging = n.saturating_sub(r + f);
    let progressing = if converging > 0 && !matches!(problem, Some(Problem::NotFollowed(_))) {
        let others: Vec<String> = tally
            .versions
            .iter()
            .filter(|(v, _)| v.as_str() != version)
            .map(|(v, c)| format!("{c} on {v}"))
            .collect();
        let rest = if others.is_empty() {
            String::new()
        } else {
            format!(" ({})", others.join(", "))
        };
        cond(
            "Progressing",
            true,
            "RollingOut",
            format!("{converging} of {n} nodes are installing {version}{rest}"),
        )
    } else {
        cond(
            "Progressing",
            false,
            "Settled",
            format!("no node is installing {version}"),
        )
    };
    let degraded = match problem {
        Some(Problem::NotFollowed(why)) => cond("Degraded", true, "NotFollowed", why.clone()),
        _ if f > 0 => cond("Degraded", true, "NodesFailed", failure_message(tally)),
        Some(Problem::RuntimeClassTaken(why)) => {
            cond("Degraded", true, "RuntimeClassNotOwned", why.clone())
        }
        None => cond("Degraded", false, "NoFailures", "no node failed".into()),
    };
    [ready, progressing, degraded]
}

/// "2 nodes failed: n1: …; n2: …" (the first few).
pub fn failure_message(tally: &Tally) -> String {
    let named: Vec<String> = tally
        .failures
        .iter()
        .map(|(node, why)| format!("{node}: {why}"))
        .collect();
    let more = tally.failed as usize - named.len().min(tally.failed as usize);
    format!(
        "{} node{} failed: {}{}",
        tally.failed,
        if tally.failed == 1 { "" } else { "s" },
        named.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    )
}

fn cond(kind: &str, holds: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: kind.into(),
        status: if holds { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(Timestamp::now()),
        observed_generation: None,
    }
}

fn keep_transition_time(mut c: Condition, previous: Option<&ShimStatus>) -> Condition {
    let before = previous.and_then(|p| p.conditions.iter().find(|p| p.type_ == c.type_));
    if let Some(before) = before.filter(|b| b.status == c.status) {
        c.last_transition_time = before.last_transition_time.clone();
    }
    c
}

/// What changed that an operator should hear of, as (warning, reason, note).
pub fn news(previous: Option<&ShimStatus>, now: &ShimStatus) -> Vec<(bool, &'static str, String)> {
    let get = |s: Option<&ShimStatus>, kind: &str| -> Option<Condition> {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == kind).cloned())
    };
    let mut out = Vec::new();
    if let Some(d) = get(Some(now), "Degraded").filter(|d| d.status == "True") {
        let before = get(previous, "Degraded");
        if before.as_ref().map(|b| (&b.status, &b.message)) != Some((&d.status, &d.message)) {
            out.push((true, "Degraded", d.message));
        }
    }
    if let Some(r) = get(Some(now), "Ready").filter(|r| r.status == "True") {
        if get(previous, "Ready").is_none_or(|b| b.status != "True") && now.nodes > 0 {
            out.push((false, "Ready", r.message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shim() -> Shim {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kwasm.sh/v1alpha1", "kind": "Shim",
            "metadata": {"name": "spin", "generation": 3},
            "spec": {
                "runtimeType": "io.containerd.spin.v2", "binary": "containerd-shim-spin-v2",
                "version": "v2",
                "platforms": [{"arch": "amd64", "url": "https://example.com/spin.tar.gz",
                               "sha256": "eec8df96fa3a4fe5dbc57ffb706461692c055299dd6d22dff9444863a2a12281"}],
                "nodeSelector": {"pool": "wasm"}
            }
        }))
        .unwrap()
    }

    fn node(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let mut labels = labels.to_vec();
        labels.push(("pool", "wasm"));
        ObjectMeta {
            name: Some(name.into()),
            labels: map(&labels),
            annotations: map(annotations),
            ..Default::default()
        }
    }

    const ASK: (&str, &str) = ("kwasm.sh/kwasm-node", "true");

    #[test]
    fn nodes_are_counted_by_what_they_ask_and_show() {
        let s = shim();
        let entry = s.to_catalog_entry(&Default::default()).unwrap();
        let failed = r#"{"phase":"Failed","shims":[],"error":"digest mismatch","time":"t"}"#;
        let nodes = [
            node(
                "ready",
                &[
                    ("kwasm.sh/shim.spin", "true"),
                    ("kwasm.sh/version.spin", "v2"),
                ],
                &[ASK],
            ),
            node(
                "old",
                &[
                    ("kwasm.sh/shim.spin", "true"),
                    ("kwasm.sh/version.spin", "v1"),
                ],
                &[ASK],
            ),
            node("failed", &[], &[ASK, ("kwasm.sh/kwasm-status", failed)]),
            node("not-asking", &[], &[]),
            node("other-shims", &[], &[ASK, ("kwasm.sh/shims", "wasmtime")]),
            node("arm", &[("kubernetes.io/arch", "arm64")], &[ASK]),
        ];
        let mut unselected = node("unselected", &[], &[ASK]);
        unselected.labels.as_mut().unwrap().remove("pool");
        let all = nodes.iter().chain([&unselected]);
        let t = tally(&s, &entry, all, &TriggerSettings::default());
        assert_eq!((t.nodes, t.ready, t.failed), (3, 1, 1));
        assert_eq!(t.versions, [("v1".into(), 1), ("v2".into(), 1)].into());
        assert_eq!(t.failures, [("failed".into(), "digest mismatch".into())]);
        let st = status(&s, &t, None, None);
        assert_eq!(st.ready_summary, "1/3");
        assert_eq!(st.observed_generation, Some(3));
        let c = |k: &str| st.conditions.iter().find(|c| c.type_ == k).unwrap().clone();
        assert_eq!(
            (c("Ready").status.as_str(), c("Ready").reason.as_str()),
            ("False", "NodesNotReady")
        );
        assert_eq!(c("Progressing").status, "True");
        assert!(
            c("Progressing").message.contains("1 on v1"),
            "{:?}",
            c("Progressing")
        );
        assert_eq!(
            c("Degraded").message,
            "1 node failed: failed: digest mismatch"
        );
        let news = news(None, &st);
        assert_eq!(news.len(), 1);
        assert_eq!(news[0].1, "Degraded");
    }

    #[test]
    fn transition_times_hold_while_a_condition_does_and_news_is_only_news() {
        let s = shim();
        let t = Tally {
            nodes: 2,
            ready: 2,
            ..Default::default()
        };
        let first = status(&s, &t, None, None);
        let again = status(&s, &t, None, Some(&first));
        assert_eq!(first, again, "an unchanged status is written once");
        assert_eq!(news(None, &first)[0].1, "Ready");
        assert!(news(Some(&first), &again).is_empty());
        let taken = Problem::RuntimeClassTaken("RuntimeClass spin is not this Shim's".into());
        let st = status(&s, &t, Some(&taken), Some(&first));
        let d = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "RuntimeClassNotOwned")
        );
    }
}
