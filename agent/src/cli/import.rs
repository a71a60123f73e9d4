//! `kwasm-agent import-shim FILE…`: runtime-class-manager's Shim manifests (and our own, passed
//! through after checking) as our Shim objects, printed as YAML for `kubectl apply -f -`. All or
//! nothing: when one document cannot be honoured, nothing is printed and each reason is named, so a
//! pipe into kubectl never applies half a catalog.

use std::io::Read as _;

use anyhow::Context as _;
use serde::Deserialize as _;
use serde_json::Value;

use super::ImportShimArgs;
use crate::crd::rcm::{self, ImportOptions};
use crate::crd::Shim;
use crate::settings::Settings;

pub fn import_shim(a: ImportShimArgs) -> anyhow::Result<()> {
    let opts = ImportOptions {
        allow_unverified: a.allow_unverified,
        version: a.version.clone(),
    };
    let mut settings = Settings::default();
    settings.artifacts.allow_unverified = a.allow_unverified;
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for file in &a.files {
        let text = read(file)?;
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let at = format!("{file}: document {}", i + 1);
            let doc = Value::deserialize(doc).with_context(|| format!("{at}: not YAML"))?;
            if doc.is_null() {
                continue;
            }
            match convert(&doc, &opts, &settings) {
                Ok(shim) => out.push(shim),
                Err(why) => {
                    let name = doc["metadata"]["name"].as_str().unwrap_or("?");
                    refused.push(format!("{at} ({name}): {why}"));
                }
            }
        }
    }
    anyhow::ensure!(
        refused.is_empty(),
        "refused {} of {} Shim(s), printed none: {}",
        refused.len(),
        refused.len() + out.len(),
        refused.join(" | ")
    );
    anyhow::ensure!(!out.is_empty(), "no Shim in {}", a.files.join(", "));
    let docs: Vec<String> = out
        .iter()
        .map(serde_yaml_ng::to_string)
        .collect::<Result<_, _>>()?;
    print!("{}", docs.join("---\n"));
    Ok(())
}

fn read(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
}

/// One document as our Shim, checked as the agents will check it.
fn convert(doc: &Value, opts: &ImportOptions, settings: &Settings) -> Result<Shim, String> {
    let shim = match doc["apiVersion"].as_str() {
        Some("kwasm.sh/v1alpha1") => {
            serde_json::from_value::<Shim>(doc.clone()).map_err(|e| e.to_string())?
        }
        _ => rcm::import(doc, opts)?,
    };
    shim.to_catalog_entry(settings)?;
    Ok(shim)
}
