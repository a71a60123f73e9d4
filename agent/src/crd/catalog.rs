//! One node's catalog: the settings file's `[[shims]]` and the cluster's Shim objects that select the
//! node. The file wins on a name (or binary) clash: it is what the node's operator wrote for this
//! agent, and an object must never replace a shim the file pins.

use std::collections::BTreeMap;

use super::shim::Shim;
use crate::settings::{self, Settings};

#[derive(Debug, Default, PartialEq)]
pub struct Merged {
    pub shims: Vec<settings::Shim>,
    /// Objects left out, with why (invalid spec, clash with the file).
    pub skipped: Vec<(String, String)>,
}

/// `labels`: the node's; objects whose nodeSelector does not match are not this node's catalog.
pub fn merge(settings: &Settings, objects: &[Shim], labels: &BTreeMap<String, String>) -> Merged {
    let mut merged = Merged {
        shims: settings.shims.clone(),
        skipped: Vec::new(),
    };
    let mut objects: Vec<&Shim> = objects.iter().filter(|o| o.selects(labels)).collect();
    objects.sort_by_key(|o| o.metadata.name.clone());
    for object in objects {
        let name = object.metadata.name.clone().unwrap_or_default();
        let entry = match object.to_catalog_entry(settings) {
            Ok(e) => e,
            Err(why) => {
                merged.skipped.push((name, why));
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
        merged.shims.push(entry);
    }
    merged
}

/// Objects no agent follows, with why (an invalid spec, a clash with the file or another object),
/// whatever their nodeSelector: what the catalog controller shows on them.
pub fn refused(settings: &Settings, objects: &[&Shim]) -> BTreeMap<String, String> {
    let everywhere: Vec<Shim> = objects
        .iter()
        .map(|o| {
            let mut o = (*o).clone();
            o.spec.node_selector.clear();
            o
        })
        .collect();
    merge(settings, &everywhere, &BTreeMap::new())
        .skipped
        .into_iter()
        .collect()
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
        let m = merge(&file(), &objects, &BTreeMap::new());
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
        let m = merge(&file(), &objects, &labels);
        assert!(m.shims.iter().any(|s| s.name == "pooled"));
    }

    #[test]
    fn an_invalid_object_is_left_out_with_its_reason() {
        let mut bad = object("wasmtime", "containerd-shim-wasmtime-v1", &[]);
        bad.spec.platforms[0].sha256 = Some("nope".into());
        let m = merge(&file(), &[bad], &BTreeMap::new());
        assert_eq!(m.shims.len(), 1);
        assert!(
            m.skipped[0].1.starts_with("spec.platforms[0].sha256"),
            "{:?}",
            m.skipped
        );
    }
}
