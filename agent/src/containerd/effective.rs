//! containerd's effective config — what `containerd config dump` prints after it merged imports and
//! migrated old versions — as the proof of an edit, computed without I/O from two dumps: the current
//! config's and the candidate's. The candidate must list every runtime the agent writes, with the
//! `runtime_type` and options it wrote, and equal the current config everywhere else: no setting of
//! the node (default runtime, other runtimes, registry, sandbox image, CNI, metrics, proxy plugins,
//! `root`, `oom_score`, …) lost, moved or changed. A file's text can look right and still be ignored
//! (a runtime under a section this containerd does not read); the dump cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::{anyhow, bail, Context};
use toml::{Table, Value};

/// The CRI plugins a dump keeps its runtimes under: containerd 1.x prints `version = 2` with the first,
/// 2.x prints version 3 with the second.
const RUNTIME_PLUGINS: [&str; 2] = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"];

/// One difference between two dumps, at a key path.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub path: Vec<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Value>| match v {
            None => "(absent)".to_owned(),
            Some(v) => inline(v),
        };
        match (&self.before, &self.after) {
            (None, Some(_)) => write!(f, "+ {} = {}", key_path(&self.path), show(&self.after)),
            (Some(_), None) => write!(f, "- {} = {}", key_path(&self.path), show(&self.before)),
            _ => write!(
                f,
                "~ {}: {} -> {}",
                key_path(&self.path),
                show(&self.before),
                show(&self.after)
            ),
        }
    }
}

/// A key path as TOML writes it (`plugins."io.containerd.cri.v1.runtime".containerd`).
pub fn key_path(path: &[String]) -> String {
    let bare = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    path.iter()
        .map(|k| if bare(k) { k.clone() } else { format!("{k:?}") })
        .collect::<Vec<_>>()
        .join(".")
}

fn inline(v: &Value) -> String {
    match v {
        Value::Table(t) => {
            let inner: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", inline(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", ")),
        v => v.to_string(),
    }
}

pub fn parse_dump(text: &str) -> anyhow::Result<Table> {
    text.parse::<Table>()
        .context("containerd's `config dump` printed something that is not TOML")
}

/// Every difference between two dumps, in key order. `imports` is left out: it is the files' plumbing
/// (a candidate is read from scratch copies), not a setting.
pub fn changes(before: &Table, after: &Table) -> Vec<Change> {
    let mut out = Vec::new();
    let (mut b, mut a) = (before.clone(), after.clone());
    b.remove("imports");
    a.remove("imports");
    diff_tables(&mut Vec::new(), &b, &a, &mut out);
    out
}

fn diff_tables(path: &mut Vec<String>, before: &Table, after: &Table, out: &mut Vec<Change>) {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for k in keys {
        path.push(k.clone());
        match (before.get(k), after.get(k)) {
            (Some(Value::Table(b)), Some(Value::Table(a))) => diff_tables(path, b, a, out),
            (b, a) if b == a => {}
            (b, a) => out.push(Change {
                path: path.clone(),
                before: b.cloned(),
                after: a.cloned(),
            }),
        }
        path.pop();
    }
}

/// The path of a runtime's table in a dump, when the dump lists it.
fn runtime_path(dump: &Table, handler: &str) -> Option<Vec<String>> {
    RUNTIME_PLUGINS.iter().find_map(|plugin| {
        let runtimes = dump
            .get("plugins")?
            .get(*plugin)?
            .get("containerd")?
            .get("runtimes")?;
        runtimes.get(handler)?;
        Some(
            ["plugins", plugin, "containerd", "runtimes", handler]
                .map(str::to_owned)
                .to_vec(),
        )
    })
}

fn lookup<'a>(dump: &'a Table, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(dump.get(first)?, |v, k| v.get(k))
}

/// Why a candidate is refused: the first thing its effective config gets wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Proves `after` (the candidate's dump) against `before` (the current config's): each of `written`
/// (handler → the table the agent wrote: `runtime_type`, `options`) is listed with those values,
/// each of `gone` is not listed, and nothing else differs. `ours` are every handler the agent owns
/// or writes: only their tables may change.
pub fn prove(
    before: &Table,
    after: &Table,
    written: &BTreeMap<String, Table>,
    gone: &[String],
    ours: &BTreeSet<String>,
) -> anyhow::Result<()> {
    for (handler, table) in written {
        let Some(path) = runtime_path(after, handler) else {
            bail!(Refused(format!(
                "containerd's effective config (config dump) does not list runtime {handler:?}: this containerd does not read the table written for it"
            )));
        };
        expect_values(after, &path, table, handler)?;
    }
    for handler in gone {
        if let Some(path) = runtime_path(after, handler) {
            bail!(Refused(format!(
                "runtime {handler:?} is still in containerd's effective config at {} after the agent's table was removed (another file configures it)",
                key_path(&path)
            )));
        }
    }
    let others: Vec<Change> = changes(before, after)
        .into_iter()
        .filter(|c| !is_ours(&c.path, ours))
        .collect();
    if let Some(first) = others.first() {
        bail!(Refused(format!(
            "the new config would change containerd's effective config outside the agent's runtimes ({} difference{}, the first: {first})",
            others.len(),
            if others.len() == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// Every value the agent wrote into a runtime table, as the dump shows it.
fn expect_values(
    after: &Table,
    path: &[String],
    wrote: &Table,
    handler: &str,
) -> anyhow::Result<()> {
    let mut leaves = Vec::new();
    leaf_values(&mut Vec::new(), wrote, &mut leaves);
    for (sub, want) in leaves {
        let full: Vec<String> = path.iter().cloned().chain(sub.iter().cloned()).collect();
        let got = lookup(after, &full);
        if got != Some(&want) {
            return Err(anyhow!(Refused(format!(
                "containerd's effective config lists runtime {handler:?} but {} is {} where the agent wrote {}",
                key_path(&full),
                got.map(inline).unwrap_or_else(|| "(absent)".into()),
                inline(&want)
            ))));
        }
    }
    Ok(())
}

fn leaf_values(path: &mut Vec<String>, t: &Table, out: &mut Vec<(Vec<String>, Value)>) {
    for (k, v) in t {
        path.push(k.clone());
        match v {
            Value::Table(inner) => leaf_values(path, inner, out),
            v => out.push((path.clone(), v.clone())),
        }
        path.pop();
    }
}

fn is_ours(path: &[String], ours: &BTreeSet<String>) -> bool {
    RUNTIME_PLUGINS.iter().any(|plugin| {
        path.len() >= 5
            && path[0] == "plugins"
            && path[1] == *plugin
            && path[2] == "containerd"
            && path[3] == "runtimes"
            && ours.contains(&path[4])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
version = 3
root = "/var/lib/containerd"
oom_score = -999
imports = ["/etc/containerd/config.toml"]
[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = true
"#;

    fn with(extra: &str) -> Table {
        parse_dump(&format!("{BEFORE}{extra}")).unwrap()
    }

    fn spin_written() -> BTreeMap<String, Table> {
        let t: Table = r#"
runtime_type = "/opt/kwasm/bin/containerd-shim-spin-v2"
[options]
SystemdCgroup = true
"#
        .parse()
        .unwrap();
        [("spin".to_owned(), t)].into()
    }

    const SPIN: &str = r#"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.spin]
    runtime_type = "/opt/kwasm/bin/containerd-shim-spin-v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.spin.options]
      SystemdCgroup = true
"#;

    fn ours() -> BTreeSet<String> {
        ["spin".to_owned()].into()
    }

    #[test]
    fn a_candidate_that_adds_exactly_the_runtime_is_proven() {
        let before = with("");
        let mut after = with(SPIN);
        after.insert("imports".into(), Value::Array(vec!["/scratch".into()]));
        prove(&before, &after, &spin_written(), &[], &ours()).unwrap();
        // And the other way round: removing it.
        prove(&after, &before, &BTreeMap::new(), &["spin".into()], &ours()).unwrap();
        let shown: Vec<String> = changes(&before, &after)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            shown,
            [
                r#"+ plugins."io.containerd.cri.v1.runtime".containerd.runtimes.spin = { options = { SystemdCgroup = true }, runtime_type = "/opt/kwasm/bin/containerd-shim-spin-v2" }"#
            ]
        );
    }

    #[test]
    fn a_runtime_containerd_does_not_read_is_refused() {
        // The AKS case: written under grpc.v1.cri in a file a 2.x containerd reads with 2.x names.
        let e = prove(&with(""), &with(""), &spin_written(), &[], &ours()).unwrap_err();
        assert!(
            e.to_string().contains("does not list runtime \"spin\""),
            "{e}"
        );
    }

    #[test]
    fn a_value_other_than_written_is_refused_naming_the_key() {
        let after = with(&SPIN.replace("SystemdCgroup = true", "SystemdCgroup = false"));
        let e = prove(&with(""), &after, &spin_written(), &[], &ours()).unwrap_err();
        assert!(
            e.to_string().contains(
                r#"plugins."io.containerd.cri.v1.runtime".containerd.runtimes.spin.options.SystemdCgroup is false"#
            ),
            "{e}"
        );
    }

    #[test]
    fn any_other_change_is_refused_with_the_first_difference() {
        let mut after = with(SPIN);
        after.insert("oom_score".into(), Value::Integer(0));
        let runc = [
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ];
        let mut t = &mut after;
        for k in runc {
            t = t.get_mut(k).unwrap().as_table_mut().unwrap();
        }
        t.remove("runc");
        let e = prove(&with(""), &after, &spin_written(), &[], &ours()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("2 differences, the first: ~ oom_score: -999 -> 0"),
            "{msg}"
        );
    }

    #[test]
    fn a_removed_runtime_still_listed_is_refused() {
        let e = prove(
            &with(SPIN),
            &with(SPIN),
            &BTreeMap::new(),
            &["spin".into()],
            &ours(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("still in containerd's effective config"),
            "{e}"
        );
    }
}
