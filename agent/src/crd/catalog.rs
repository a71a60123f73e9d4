//! One node's catalog: the settings file's `[[shims]]` and the cluster's Shim objects that select the
//! node. The file wins on a name (or binary) clash: it is what the node's operator wrote for this
//! agent, and an object must never replace a shim the file pins.

use std::collections::BTreeMap;

use super::shim::Shim;
use crate::settings::{self, Settings};

/// A Shim object with its catalog entry, checked once as a settings file's `[[shims]]` entry is (or
/// why it cannot be one): every node's merge, and every status pass, reuse the verdict.
#[derive(Debug, Clone)]
pub struct Checked {
    pub object: Shim,
    pub entry: Result<settings::Shim, String>,
}

/// `objects` checked, in name order (the order clashes are settled in).
pub fn check<'a>(settings: &Settings, objects: impl IntoIterator<Item = &'a Shim>) -> Vec<Checked> {
    let mut checked: Vec<Checked> = objects
        .into_iter()
        .map(|o| Checked {
            entry: o.to_catalog_entry(settings),
            object: o.clone(),
        })
        .collect();
    checked.sort_by_key(|c| c.object.metadata.name.clone());
    checked
}

#[derive(Debug, Default, PartialEq)]
pub struct Merged {
    pub shims: Vec<settings::Shim>,
    /// Objects left out, with why (invalid spec, clash with the file).
    pub skipped: Vec<(String, String)>,
}

/// `labels`: the node's; objects whose nodeSelector does not match are not this node's catalog.
/// None: every object, whatever its nodeSelector.
pub fn merge(
    settings: &Settings,
    checked: &[Checked],
    labels: Option<&BTreeMap<String, String>>,
) -> Merged {
    let mut merged = Merged {
        shims: settings.shims.clone(),
        skipped: Vec::new(),
    };
    let selected = checked
        .iter()
        .filter(|c| labels.is_none_or(|l| c.object.selects(l)));
    for Checked { object, entry } in selected {
        let name = object.metadata.name.clone().unwrap_or_default();
        let entry = match entry {
            Ok(e) => e,
            Err(why) => {
                merged.skipped.push((name, why.clone()));
                continue;
            }
        };
        let clash = merged
            .shims
            .iter()
            .find(|s| s.name == entry.name || s.binary == entry.binary);
        if let Some(other) = clash {
            let why = if settings.shim(&other.name).is_some() {
                format!(
                    "the settings file defines shim {:?} (binary {}); the file wins",
                    other.name, other.binary
                )
            } else {
                format!(
                    "another Shim object already has handler {:?} or binary {}",
                    other.name, other.binary
                )
            };
            merged.skipped.push((name, why));
            continue;
        }
        merged.shims.push(entry.clone());
    }
    merged
}

/// Objects no agent follows, with why (an invalid spec, a clash with the file or another object),
/// whatever their nodeSelector: what the catalog controller shows on them.
pub fn refused(settings: &Settings, checked: &[Checked]) -> BTreeMap<String, String> {
    merge(settings, checked, None).skipped.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, binary: &str, selector: &[(&str, &str)]) -> Shim {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kwasm.sh/v1alpha1", "kind": "Shim",
            "metadata": {"name": name},
            "spec": {
                "runtimeType": format!("io.containerd.{name}.v2"), "binary": binary,
                "version": "v1.0.0",
                "platforms": [{"arch": "amd64", "url": "https://example.com/x.tar.gz",
                               "sha256": "eec8df96fa3a4fe5dbc57ffb706461692c055299dd6d22dff9444863a2a12281"}],
                "nodeSelector": selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            }
        }))
        .unwrap()
    }

    fn file() -> Settings {
        Settings::parse(
            r#"
[[shims]]
name = "spin"
runtime_type = "io.containerd.spin.v2"
binary = "containerd-shim-spin-v2"
version = "v0.23.0"
platforms = [{ arch = "amd64", url = "https://example.com/spin.tar.gz", sha256 = "eec8df96fa3a4fe5dbc57ffb706461692c055299dd6d22dff9444863a2a12281" }]
"#,
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn objects_add_to_the_file_which_wins_a_clash() {
        let objects = vec![
            object("wasmtime", "containerd-shim-wasmtime-v1", &[]),
            object("spin", "containerd-shim-spin-v3", &[]),
            object("other", "containerd-shim-spin-v2", &[]),
            object("pooled", "containerd-shim-pooled-v1", &[("pool", "wasm")]),
        ];
        let checked = check(&file(), &objects);
        let m = merge(&file(), &checked, Some(&BTreeMap::new()));
        let names: Vec<&str> = m.shims.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["spin", "wasmtime"]);
        assert_eq!(
            m.shims[0].binary, "containerd-shim-spin-v2",
            "the file's spin"
        );
        let skipped: Vec<&str> = m.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["other", "spin"]);
        assert!(m.skipped[1].1.contains("the file wins"), "{:?}", m.skipped);
        let labels = [("pool".to_owned(), "wasm".to_owned())].into();
        let m = merge(&file(), &checked, Some(&labels));
        assert!(m.shims.iter().any(|s| s.name == "pooled"));
    }

    #[test]
    fn an_invalid_object_is_left_out_with_its_reason() {
        let mut bad = object("wasmtime", "containerd-shim-wasmtime-v1", &[]);
        bad.spec.platforms[0].sha256 = Some("nope".into());
        let m = merge(&file(), &check(&file(), [&bad]), Some(&BTreeMap::new()));
        assert_eq!(m.shims.len(), 1);
        assert!(
            m.skipped[0].1.starts_with("spec.platforms[0].sha256"),
            "{:?}",
            m.skipped
        );
    }
}
