//! `Shim` objects: one catalog entry each, as the settings file's `[[shims]]` holds it, plus the
//! RuntimeClass to keep for it and which nodes get it. The status is written by the catalog
//! controller and holds counts only, so it stays small on any number of nodes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use crate::settings::{self, Settings};

/// The CRD itself is the chart's `crds/shims.kwasm.sh.yaml` (its schema written for the API server's
/// validation and printer columns); this type is how the agent reads and writes the objects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kwasm.sh",
    version = "v1alpha1",
    kind = "Shim",
    status = "ShimStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ShimSpec {
    /// The CRI handler name; default: the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    pub runtime_type: String,
    pub binary: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
    pub platforms: Vec<PlatformSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<RuntimeClassSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PlatformSpec {
    pub arch: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_regexp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct RuntimeClassSpec {
    /// Default: the handler name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// false: no RuntimeClass is kept for this shim. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ShimStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
    /// Nodes that should have this shim.
    pub nodes: u32,
    /// Of those, on this version with its handler proven loaded.
    pub ready: u32,
    pub failed: u32,
    /// "ready/nodes", for the printer column.
    pub ready_summary: String,
    /// Nodes per installed version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Shim {
    /// The CRI handler: `spec.handler`, else the object's name.
    pub fn handler(&self) -> String {
        self.spec
            .handler
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }

    /// The RuntimeClass kept for it; None: `runtimeClass.create` is false.
    pub fn runtime_class_name(&self) -> Option<String> {
        let rc = self.spec.runtime_class.clone().unwrap_or_default();
        if rc.create == Some(false) {
            return None;
        }
        Some(rc.name.unwrap_or_else(|| self.handler()))
    }

    /// Whether a node with `labels` gets this shim.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.spec
            .node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }

    /// The catalog entry this object stands for, checked as a settings file's `[[shims]]` entry is
    /// (names, URLs, digests' form, verify); the error names the field under `spec`.
    pub fn to_catalog_entry(&self, settings: &Settings) -> Result<settings::Shim, String> {
        let s = &self.spec;
        let verify = s.verify.as_ref().map(|v| {
            serde_json::json!({
                "identity": v.identity, "identity_regexp": v.identity_regexp, "issuer": v.issuer,
                "signature": v.signature, "certificate": v.certificate,
                "trust_root": v.trust_root, "public_key": v.public_key,
            })
        });
        let entry = serde_json::json!({
            "name": self.handler(),
            "runtime_type": s.runtime_type,
            "binary": s.binary,
            "version": s.version,
            "options": s.options,
            "platforms": s.platforms.iter().map(|p| serde_json::json!({
                "arch": p.arch, "url": p.url, "sha256": p.sha256,
            })).collect::<Vec<_>>(),
            "verify": verify.map(strip_nulls),
        });
        let entry: settings::Shim =
            serde_json::from_value(strip_nulls(entry)).map_err(|e| format!("spec: {e}"))?;
        settings
            .check_shim(&entry)
            .map_err(|(key, why)| format!("spec.{}: {why}", camel_key(&key)))?;
        Ok(entry)
    }
}

/// Absent optional fields are absent, not null, for the settings' parser.
fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, strip_nulls(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        serde_json::Value::Array(a) => a.into_iter().map(strip_nulls).collect(),
        other => other,
    }
}

/// A settings key (`platforms[0].sha256`, `runtime_type`) as the Shim's field is spelt.
fn camel_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    match out.as_str() {
        "name" => "handler".to_owned(),
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shim(yaml: serde_json::Value) -> Shim {
        serde_json::from_value(yaml).unwrap()
    }

    fn spin() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "kwasm.sh/v1alpha1", "kind": "Shim",
            "metadata": {"name": "spin"},
            "spec": {
                "runtimeType": "io.containerd.spin.v2", "binary": "containerd-shim-spin-v2",
                "version": "v0.23.0", "options": {"SystemdCgroup": true},
                "platforms": [{"arch": "x86_64", "url": "https://example.com/spin.tar.gz",
                               "sha256": "eec8df96fa3a4fe5dbc57ffb706461692c055299dd6d22dff9444863a2a12281"}],
                "runtimeClass": {"name": "wasmtime-spin-v2"},
                "nodeSelector": {"pool": "wasm"}
            }
        })
    }

    #[test]
    fn an_object_is_the_settings_entry_it_spells() {
        let s = shim(spin());
        let entry = s.to_catalog_entry(&Settings::default()).unwrap();
        assert_eq!(entry.name, "spin");
        assert_eq!(entry.runtime_type, "io.containerd.spin.v2");
        assert_eq!(entry.platforms[0].arch, crate::arch::Arch::Amd64);
        assert_eq!(
            entry.options.unwrap().get("SystemdCgroup"),
            Some(&toml::Value::Boolean(true))
        );
        assert_eq!(s.runtime_class_name().as_deref(), Some("wasmtime-spin-v2"));
        let mut labels = BTreeMap::new();
        assert!(!s.selects(&labels));
        labels.insert("pool".to_owned(), "wasm".to_owned());
        assert!(s.selects(&labels));
    }

    #[test]
    fn a_bad_field_is_named_as_the_object_spells_it() {
        let mut v = spin();
        v["spec"]["platforms"][0]["sha256"] = "abc".into();
        let err = shim(v).to_catalog_entry(&Settings::default()).unwrap_err();
        assert!(err.starts_with("spec.platforms[0].sha256:"), "{err}");
        let mut v = spin();
        v["spec"]["handler"] = "Not_A_Label".into();
        let err = shim(v).to_catalog_entry(&Settings::default()).unwrap_err();
        assert!(err.starts_with("spec.handler:"), "{err}");
        let mut v = spin();
        v["spec"]["platforms"][0]["arch"] = "mips".into();
        let err = shim(v).to_catalog_entry(&Settings::default()).unwrap_err();
        assert!(err.starts_with("spec:"), "{err}");
    }

    #[test]
    fn no_runtime_class_when_asked_and_the_handler_defaults_to_the_name() {
        let mut v = spin();
        v["spec"]["runtimeClass"] = serde_json::json!({"create": false});
        assert_eq!(shim(v).runtime_class_name(), None);
        let mut v = spin();
        v["spec"].as_object_mut().unwrap().remove("runtimeClass");
        assert_eq!(shim(v).runtime_class_name().as_deref(), Some("spin"));
    }
}
