//! What a Node asks for: the trigger (annotation or label set to "true"), the shims annotation's list,
//! and reading a Node's labels and annotations.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::settings::TriggerSettings;

/// The shim names in a shims annotation (`spin, wasmtime`).
pub fn named_shims(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The trigger: the annotation or the label set to "true".
pub fn asks_for_shims(node: &Node, t: &TriggerSettings) -> bool {
    meta_asks_for_shims(&node.metadata, t)
}

/// The same, from a Node's metadata alone (what the catalog controller watches).
pub fn meta_asks_for_shims(meta: &ObjectMeta, t: &TriggerSettings) -> bool {
    let get = |m: &Option<std::collections::BTreeMap<String, String>>, k: &str| {
        m.as_ref().and_then(|m| m.get(k)).map(String::as_str) == Some("true")
    };
    get(&meta.annotations, &t.annotation) || get(&meta.labels, &t.label)
}

pub fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

pub fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}
