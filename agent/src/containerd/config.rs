//! containerd's config.toml as a document to edit: its version (parsed, never guessed from text), where
//! the CRI runtimes live for that version, and the edits the agent makes — each one preserving every
//! comment, key order and blank line the operator had.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use toml_edit::{value, Array, DocumentMut, Item, Table, Value};

/// The marker on every table the agent writes, so a person reading config.toml knows who wrote it.
pub const MARK: &str = "# Added by kwasm-agent; `kwasm-agent remove` takes it away.";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ConfigVersion(pub i64);

impl ConfigVersion {
    /// Refuse what no containerd release reads.
    pub fn check(self) -> anyhow::Result<Self> {
        match self.0 {
            1..=4 => Ok(self),
            v => bail!(
                "containerd config version {v} is not supported (known: 1, 2, 3, 4); refusing to edit it"
            ),
        }
    }

    /// containerd 2.x (config version 3 and later) merges imported files per plugin; 1.x replaces whole
    /// plugin sections, so on 1.x a drop-in carrying CRI tables would clobber the main file's CRI config.
    pub fn merges_imports(self) -> bool {
        self.0 >= 3
    }
}

/// The plugin whose `containerd.runtimes` table holds CRI runtimes in a file, as the containerd that
/// reads the file looks for it. The `version` key alone does not say: containerd 2.x reads a
/// `version = 2` file that already uses its own section names (AKS writes exactly that) and then
/// ignores a `grpc.v1.cri` runtime in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CriSection {
    /// `plugins.cri` (config version 1).
    Cri,
    /// `plugins."io.containerd.grpc.v1.cri"` (version 2, containerd 1.x names).
    GrpcV1Cri,
    /// `plugins."io.containerd.cri.v1.runtime"` (containerd 2.x names).
    CriV1Runtime,
}

impl CriSection {
    pub const ALL: [CriSection; 3] = [Self::Cri, Self::GrpcV1Cri, Self::CriV1Runtime];

    pub fn plugin(self) -> &'static str {
        match self {
            Self::Cri => "cri",
            Self::GrpcV1Cri => "io.containerd.grpc.v1.cri",
            Self::CriV1Runtime => "io.containerd.cri.v1.runtime",
        }
    }

    /// The `runtimes` table's key path.
    pub fn runtimes_path(self) -> [&'static str; 4] {
        ["plugins", self.plugin(), "containerd", "runtimes"]
    }

    /// Where the runtimes of `doc` (config `version`) go for the containerd `host` runs:
    /// - version 1 and ≥3 name one section each;
    /// - version 2 read by containerd 1.x: the 1.x names (1.x never reads the 2.x ones);
    /// - version 2 read by 2.x (or an unknown release): where the file already keeps its runtimes —
    ///   2.x migrates a `grpc.v1.cri` runtimes table, but a 2.x-named one replaces it whole — else
    ///   the 2.x names if the file uses any of them (it was written for 2.x), else the 1.x names.
    pub fn for_document(
        doc: &DocumentMut,
        version: ConfigVersion,
        host: Option<ContainerdVersion>,
    ) -> anyhow::Result<Self> {
        Ok(match version.check()?.0 {
            1 => Self::Cri,
            2 if host.is_some_and(|h| h.major < 2) => Self::GrpcV1Cri,
            2 => {
                let holds_runtimes = |s: Self| table_at(doc, &s.runtimes_path()).is_some();
                if holds_runtimes(Self::CriV1Runtime) {
                    Self::CriV1Runtime
                } else if holds_runtimes(Self::GrpcV1Cri) {
                    Self::GrpcV1Cri
                } else if uses_v2_plugin_names(doc) {
                    Self::CriV1Runtime
                } else {
                    Self::GrpcV1Cri
                }
            }
            _ => Self::CriV1Runtime,
        })
    }
}

/// Does the file name any of containerd 2.x's CRI plugins (`io.containerd.cri.v1.images`, `…runtime`)?
fn uses_v2_plugin_names(doc: &DocumentMut) -> bool {
    doc.get("plugins")
        .and_then(|p| p.as_table_like())
        .is_some_and(|p| {
            p.iter()
                .any(|(k, _)| k.starts_with("io.containerd.cri.v1."))
        })
}

/// What goes into a runtime table.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeEntry {
    pub handler: String,
    /// The runtime's name from the settings (`io.containerd.spin.v2`), kept for the ownership record.
    pub runtime_type: String,
    /// The installed binary as the host sees it: written as the table's `runtime_type`.
    pub binary: PathBuf,
    pub options: Option<toml::Table>,
}

/// How containerd hands a runtime's `options` table to a shim that is not runc — every WebAssembly
/// shim, and any runtime whose `runtime_type` is a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionsDelivery {
    /// containerd 1.7 and later pass the table's TOML as the shim's `ConfigBody`; runwasi's shims read
    /// `SystemdCgroup` from it and refuse a body without it.
    TomlBody,
    /// containerd 1.6 keeps only `ConfigPath` and `TypeUrl` and sends an empty body, which runwasi's
    /// shims refuse ("missing field systemd_cgroup"): no table is written.
    Dropped,
}

impl OptionsDelivery {
    /// From the host's containerd version; when it is unknown a version 3+ config means containerd
    /// 2.x, and a version 2 config may be 1.6, so no table is written (the shim then runs on its own
    /// defaults rather than refusing every pod).
    pub fn for_host(containerd: Option<ContainerdVersion>, config: ConfigVersion) -> Self {
        match containerd {
            Some(v) if (v.major, v.minor) >= (1, 7) => Self::TomlBody,
            Some(_) => Self::Dropped,
            None if config.merges_imports() => Self::TomlBody,
            None => Self::Dropped,
        }
    }
}

/// The host containerd's release, from `containerd --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerdVersion {
    pub major: u32,
    pub minor: u32,
}

impl ContainerdVersion {
    /// "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1" or
    /// "containerd containerd.io v2.0.4 1a43cb…" or "… v1.7.23-k3s2 …".
    pub fn parse(version_output: &str) -> Option<Self> {
        let v = version_output
            .split_whitespace()
            .nth(2)?
            .trim_start_matches('v');
        let mut parts = v.split(['.', '-', '~', '+']);
        Some(Self {
            major: parts.next()?.parse().ok()?,
            minor: parts.next()?.parse().ok()?,
        })
    }
}

pub fn parse(text: &str, origin: &Path) -> anyhow::Result<DocumentMut> {
    text.parse::<DocumentMut>()
        .with_context(|| format!("{} is not valid TOML; not touching it", origin.display()))
}

/// The root `version` key; missing means 1.
pub fn version(doc: &DocumentMut, origin: &Path) -> anyhow::Result<ConfigVersion> {
    match doc.get("version") {
        None => Ok(ConfigVersion(1)),
        Some(item) => item
            .as_integer()
            .map(ConfigVersion)
            .ok_or_else(|| anyhow!("{}: `version` is not an integer", origin.display())),
    }
}

/// Docker's bundled containerd ships with the CRI plugin disabled: there is nothing to configure.
pub fn cri_disabled(doc: &DocumentMut) -> bool {
    doc.get("disabled_plugins")
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter().filter_map(|v| v.as_str()).any(|p| {
                matches!(
                    p,
                    "cri" | "io.containerd.grpc.v1.cri" | "io.containerd.cri.v1.runtime"
                )
            })
        })
        .unwrap_or(false)
}

fn table_at<'a>(doc: &'a DocumentMut, path: &[&str]) -> Option<&'a Table> {
    let mut cur = doc.as_table();
    for k in path {
        cur = cur.get(k)?.as_table()?;
    }
    Some(cur)
}

/// The runtime tables present in the document's `section`, by handler.
pub fn runtimes(doc: &DocumentMut, section: CriSection) -> BTreeMap<String, Table> {
    table_at(doc, &section.runtimes_path())
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| v.as_table().map(|t| (k.to_owned(), t.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// The default runtime's `SystemdCgroup`, which new runtimes inherit so pods keep the node's cgroup driver
/// (metrics and HPA break otherwise). Read from `section`, where containerd reads the runtimes.
pub fn default_systemd_cgroup(doc: &DocumentMut, section: CriSection) -> Option<bool> {
    let containerd = table_at(doc, &["plugins", section.plugin(), "containerd"])?;
    let default = containerd
        .get("default_runtime_name")
        .and_then(|v| v.as_str())
        .unwrap_or("runc");
    containerd
        .get("runtimes")?
        .get(default)?
        .get("options")?
        .get("SystemdCgroup")?
        .as_bool()
}

/// The table the agent writes for a runtime. `runtime_type` is the installed binary's absolute path:
/// every containerd since 1.6 starts exactly that file for pod sandboxes and containers alike, while
/// `runtime_path` is ignored for sandboxes by some releases (1.6 among them) and a runtime name only
/// resolves on containerd's PATH.
pub fn runtime_table(
    entry: &RuntimeEntry,
    delivery: OptionsDelivery,
    inherit_systemd_cgroup: Option<bool>,
    indent: &str,
) -> Table {
    let mut t = Table::new();
    t.insert(
        "runtime_type",
        value(entry.binary.to_string_lossy().into_owned()),
    );
    let mut options = entry.options.clone().unwrap_or_default();
    if let Some(sc) = inherit_systemd_cgroup {
        options
            .entry("SystemdCgroup")
            .or_insert(toml::Value::Boolean(sc));
    }
    if delivery == OptionsDelivery::Dropped {
        options.clear();
    }
    if !options.is_empty() {
        let mut o = Table::new();
        for (k, v) in &options {
            o.insert(k, Item::Value(to_edit_value(v)));
        }
        o.decor_mut().set_prefix(format!("{indent}  "));
        t.insert("options", Item::Table(o));
    }
    let inner = format!("{indent}  ");
    for (mut k, v) in t.iter_mut() {
        // A sub-table's key decor lands inside its `[header]`; only plain keys are indented.
        if !v.is_table() {
            k.leaf_decor_mut().set_prefix(inner.clone());
        }
    }
    if let Some(o) = t.get_mut("options").and_then(|o| o.as_table_mut()) {
        for (mut k, _) in o.iter_mut() {
            k.leaf_decor_mut().set_prefix(format!("{inner}  "));
        }
    }
    t.decor_mut()
        .set_prefix(format!("\n{indent}{MARK}\n{indent}"));
    t
}

fn to_edit_value(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::from(s.as_str()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => match d.to_string().parse::<toml_edit::Datetime>() {
            Ok(dt) => Value::from(dt),
            Err(_) => Value::from(d.to_string()),
        },
        toml::Value::Array(a) => Value::Array(a.iter().map(to_edit_value).collect()),
        toml::Value::Table(t) => {
            let mut it = toml_edit::InlineTable::new();
            for (k, v) in t {
                it.insert(k, to_edit_value(v));
            }
            Value::InlineTable(it)
        }
    }
}

/// A table's values without its formatting.
pub fn values(t: &Table) -> toml::Table {
    let mut d = DocumentMut::new();
    for (k, v) in t.iter() {
        d.insert(k, v.clone());
    }
    d.fmt();
    toml::from_str::<toml::Table>(&d.to_string()).unwrap_or_default()
}

/// Same content, ignoring formatting: is this table what the agent would write for `entry`?
pub fn same_runtime(existing: &Table, wanted: &Table) -> bool {
    values(existing) == values(wanted)
}

/// Add the runtime table for `handler`, or replace an existing one (the caller checked it is ours).
/// Missing parent tables are created implicit, so `remove_runtime` can prune them again.
pub fn put_runtime(
    doc: &mut DocumentMut,
    section: CriSection,
    table: Table,
    handler: &str,
) -> anyhow::Result<()> {
    let path = section.runtimes_path();
    let mut cur = doc.as_table_mut();
    for k in path {
        if !cur.contains_key(k) {
            let mut t = Table::new();
            t.set_implicit(true);
            cur.insert(k, Item::Table(t));
        }
        cur = cur[k]
            .as_table_mut()
            .ok_or_else(|| anyhow!("`{}` in the config is not a table", path.join(".")))?;
    }
    match cur.get_mut(handler) {
        Some(existing) => {
            // Keep the position and decor of our existing table; replace its content.
            let decor = existing.as_table().map(|t| t.decor().clone());
            let mut t = table;
            if let Some(d) = decor {
                *t.decor_mut() = d;
            }
            if let Some(pos) = existing.as_table().and_then(|t| t.position()) {
                t.set_position(pos);
            }
            *existing = Item::Table(t);
        }
        None => {
            cur.insert(handler, Item::Table(table));
        }
    }
    Ok(())
}

/// Remove the runtime table for `handler`, and any table above it that is left empty and was implicit
/// (created only to hold ours).
pub fn remove_runtime(
    doc: &mut DocumentMut,
    section: CriSection,
    handler: &str,
) -> anyhow::Result<bool> {
    let path = section.runtimes_path();
    let removed = {
        let mut cur = doc.as_table_mut();
        for k in path {
            match cur.get_mut(k).and_then(|i| i.as_table_mut()) {
                Some(t) => cur = t,
                None => return Ok(false),
            }
        }
        cur.remove(handler).is_some()
    };
    for depth in (1..=path.len()).rev() {
        let (parent_path, key) = (&path[..depth - 1], path[depth - 1]);
        let mut cur = doc.as_table_mut();
        for k in parent_path {
            match cur.get_mut(k).and_then(|i| i.as_table_mut()) {
                Some(t) => cur = t,
                None => return Ok(removed),
            }
        }
        let prune = cur
            .get(key)
            .and_then(|i| i.as_table())
            .map(|t| t.is_empty() && t.is_implicit())
            .unwrap_or(false);
        if !prune {
            break;
        }
        cur.remove(key);
    }
    Ok(removed)
}

/// The sibling runtime tables' indentation, so ours reads like the rest of the file.
pub fn runtime_indent(doc: &DocumentMut, section: CriSection) -> String {
    table_at(doc, &section.runtimes_path())
        .and_then(|t| {
            t.iter()
                .find_map(|(_, v)| v.as_table().map(|t| t.decor().prefix().cloned()))
        })
        .flatten()
        .and_then(|p| {
            p.as_str()
                .map(|s| s.rsplit('\n').next().unwrap_or("").to_owned())
        })
        .filter(|s| s.chars().all(|c| c == ' ' || c == '\t'))
        .unwrap_or_default()
}

/// Does an `imports` entry of `doc` (in the file at host path `importer`) already cover `target`?
/// Entries are globs, relative to the importing file.
pub fn imports_cover(doc: &DocumentMut, importer: &Path, target: &Path) -> bool {
    let dir = importer.parent().unwrap_or(Path::new("/"));
    doc.get("imports")
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter().filter_map(|v| v.as_str()).any(|pat| {
                let full = if Path::new(pat).is_absolute() {
                    PathBuf::from(pat)
                } else {
                    dir.join(pat)
                };
                glob_match(&full.to_string_lossy(), &target.to_string_lossy())
            })
        })
        .unwrap_or(false)
}

/// Add `entry` to `imports`; returns whether the `imports` key had to be created.
pub fn add_import(doc: &mut DocumentMut, entry: &str) -> anyhow::Result<bool> {
    let created = !doc.contains_key("imports");
    if created {
        doc.insert("imports", value(Array::new()));
    }
    let arr = doc["imports"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("`imports` is not an array"))?;
    if !arr.iter().any(|v| v.as_str() == Some(entry)) {
        arr.push(entry);
    }
    Ok(created)
}

pub fn remove_import(doc: &mut DocumentMut, entry: &str, remove_key_if_empty: bool) {
    if let Some(arr) = doc.get_mut("imports").and_then(|i| i.as_array_mut()) {
        arr.retain(|v| v.as_str() != Some(entry));
        if arr.is_empty() && remove_key_if_empty {
            doc.remove("imports");
        }
    }
}

/// `*` and `?` within one path component, as Go's filepath.Match that containerd uses. Iterative, so
/// no import line however long or starry can exhaust the stack or take exponential time.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and how much of the name it has absorbed so far.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ni));
                pi += 1;
            }
            Some(b'?') if n[ni] != b'/' => {
                pi += 1;
                ni += 1;
            }
            Some(c) if *c != b'?' && *c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            // A `*` never absorbs a '/', and no earlier one can either (it would have to cross it).
            _ => match star {
                Some((after, absorbed)) if n[absorbed] != b'/' => {
                    star = Some((after, absorbed + 1));
                    pi = after;
                    ni = absorbed + 1;
                }
                _ => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_parsed_not_guessed() {
        let p = Path::new("c.toml");
        assert_eq!(
            version(&parse("", p).unwrap(), p).unwrap(),
            ConfigVersion(1)
        );
        assert_eq!(
            version(&parse("version = 3\n", p).unwrap(), p).unwrap(),
            ConfigVersion(3)
        );
        // A comment that mentions a version must not fool it.
        assert_eq!(
            version(&parse("# version = 3\nversion = 2\n", p).unwrap(), p).unwrap(),
            ConfigVersion(2)
        );
        assert!(version(&parse("version = \"2\"\n", p).unwrap(), p).is_err());
        assert!(ConfigVersion(5)
            .check()
            .unwrap_err()
            .to_string()
            .contains("version 5"));
    }

    #[test]
    fn globs_match_like_containerd() {
        assert!(glob_match(
            "/etc/containerd/conf.d/*.toml",
            "/etc/containerd/conf.d/99-kwasm.toml"
        ));
        assert!(!glob_match(
            "/etc/containerd/conf.d/*.toml",
            "/etc/containerd/conf.d/x/y.toml"
        ));
        assert!(glob_match("/a/?.toml", "/a/b.toml"));
        assert!(!glob_match("/a/?.toml", "/a/bc.toml"));
        assert!(glob_match("/a/*b*c", "/a/xbyc"));
        assert!(!glob_match("/a/*", "/a/b/c"));
        assert!(glob_match("*", ""));
        // Hostile input: long, starry, mismatching — answered at once.
        let p = format!("/{}x", "*a".repeat(5000));
        let n = format!("/{}", "a".repeat(20000));
        assert!(!glob_match(&p, &n));
    }
}
