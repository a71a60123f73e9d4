//! runtime-class-manager's `Shim` (`runtime.spinkube.dev/v1alpha1`) as ours: what it says that we can
//! honour is carried over; what we cannot honour is refused with the reason, never silently dropped.
//!
//! Carried: `nodeSelector`; `fetchStrategy.platforms[]` (or `anonHttp.location`, its architecture
//! read from the file name); `runtimeClass.{name, handler}`; `containerdRuntimeOptions` (strings that
//! read as booleans or integers become those, as containerd's options are typed);
//! `rolloutStrategy.type` `rolling` or `recreate` (every node installs as soon as it can either way;
//! the agents' `[fleet]` setting still paces containerd restarts, the one step no setting skips).
//! Derived as that project does: the handler is the binary's name without `containerd-shim-`
//! (`spin-v2` ↔ `containerd-shim-spin-v2`), so the runtime type is `io.containerd.spin.v2`; the
//! version from the release URL (`/download/<tag>/`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::shim::{PlatformSpec, RuntimeClassSpec, Shim, ShimSpec};
use crate::arch::Arch;

pub const API_VERSION: &str = "runtime.spinkube.dev/v1alpha1";

#[derive(Debug, Default, Clone)]
pub struct ImportOptions {
    /// Accept platforms without a sha256 (the agents must allow unverified downloads too).
    pub allow_unverified: bool,
    /// The version, when the URLs do not name one.
    pub version: Option<String>,
}

/// One runtime-class-manager Shim as ours; the error says which field cannot be honoured and why.
pub fn import(doc: &Value, opts: &ImportOptions) -> Result<Shim, String> {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    if api != API_VERSION || kind != "Shim" {
        return Err(format!(
            "expected apiVersion {API_VERSION} kind Shim, found {api:?} {kind:?}"
        ));
    }
    let node_selector: BTreeMap<String, String> = match &doc["spec"]["nodeSelector"] {
        Value::Null => BTreeMap::new(),
        v => serde_json::from_value(v.clone()).map_err(|e| format!("spec.nodeSelector: {e}"))?,
    };
    let name = doc["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is missing")?;
    let spec = doc["spec"].as_object().ok_or("spec is missing")?;
    refuse_unknown(
        spec,
        "spec",
        &[
            "nodeSelector",
            "fetchStrategy",
            "runtimeClass",
            "rolloutStrategy",
            "containerdRuntimeOptions",
        ],
    )?;
    rollout(&doc["spec"]["rolloutStrategy"])?;
    let rc = &doc["spec"]["runtimeClass"];
    refuse_unknown(
        rc.as_object().ok_or("spec.runtimeClass is missing")?,
        "spec.runtimeClass",
        &["name", "handler"],
    )?;
    let handler = rc["handler"]
        .as_str()
        .filter(|h| !h.is_empty())
        .ok_or("spec.runtimeClass.handler is missing")?;
    let platforms = platforms(&doc["spec"]["fetchStrategy"], opts)?;
    let version = version(&platforms, opts)?;
    let mut shim = Shim::new(
        name,
        ShimSpec {
            handler: (handler != name).then(|| handler.to_owned()),
            runtime_type: runtime_type(handler)?,
            binary: format!("containerd-shim-{handler}"),
            version,
            options: options(&doc["spec"]["containerdRuntimeOptions"])?,
            platforms,
            verify: None,
            runtime_class: rc["name"].as_str().map(|n| RuntimeClassSpec {
                name: Some(n.to_owned()),
                create: None,
            }),
            node_selector,
        },
    );
    shim.metadata.labels = doc["metadata"]["labels"]
        .as_object()
        .map(|l| serde_json::from_value(Value::Object(l.clone())).unwrap_or_default());
    Ok(shim)
}

/// `--version`, else the release tag in the URLs.
fn version(platforms: &[PlatformSpec], opts: &ImportOptions) -> Result<String, String> {
    match &opts.version {
        Some(v) => Ok(v.clone()),
        None => version_in(platforms).ok_or_else(|| {
            format!(
                "spec.fetchStrategy: no release version in {}; give it with --version",
                platforms[0].url
            )
        }),
    }
}

/// runtime-class-manager names the containerd runtime after the binary (`containerd-shim-spin-v2` →
/// handler `spin-v2`) and points runtime_type at the binary's path; containerd's own naming of that
/// binary is `io.containerd.spin.v2`.
fn runtime_type(handler: &str) -> Result<String, String> {
    let split = handler.rsplit_once("-v").filter(|(name, version)| {
        !name.is_empty() && !version.is_empty() && version.chars().all(|c| c.is_ascii_digit())
    });
    match split {
        Some((name, version)) => Ok(format!("io.containerd.{name}.v{version}")),
        None => Err(format!(
            "spec.runtimeClass.handler {handler:?}: the shim binary is containerd-shim-{handler}, which containerd cannot name as a runtime type; a shim binary ends in its API version (e.g. handler spin-v2 for containerd-shim-spin-v2)"
        )),
    }
}

fn refuse_unknown(obj: &Map<String, Value>, at: &str, known: &[&str]) -> Result<(), String> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("{at}.{k}: not a field kwasm-agent can honour")),
        None => Ok(()),
    }
}

fn rollout(r: &Value) -> Result<(), String> {
    match r["type"].as_str() {
        None | Some("rolling") | Some("recreate") => {}
        Some(other) => return Err(format!("spec.rolloutStrategy.type {other:?}: unknown")),
    }
    match r["rolling"]["maxUpdate"].as_i64() {
        None | Some(0) => Ok(()),
        Some(n) => Err(format!("spec.rolloutStrategy.rolling.maxUpdate {n}: a per-shim pace cannot be honoured; restarts are paced cluster-wide by the chart's fleet.maxConcurrentRestarts")),
    }
}

/// `platforms[]` wins over `anonHttp`, as in runtime-class-manager.
fn platforms(fetch: &Value, opts: &ImportOptions) -> Result<Vec<PlatformSpec>, String> {
    if let Some(obj) = fetch.as_object() {
        refuse_unknown(
            obj,
            "spec.fetchStrategy",
            &["type", "anonHttp", "platforms"],
        )?;
    }
    let listed = fetch["platforms"].as_array().filter(|p| !p.is_empty());
    let out: Vec<PlatformSpec> = match listed {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, p)| listed_platform(i, p, opts))
            .collect::<Result<_, _>>()?,
        None => {
            let url = fetch["anonHttp"]["location"]
                .as_str()
                .ok_or("spec.fetchStrategy: neither platforms nor anonHttp.location")?;
            let arch = Arch::in_url(url).ok_or_else(|| {
                format!("spec.fetchStrategy.anonHttp.location: no architecture in the file name of {url}; use fetchStrategy.platforms")
            })?;
            if !opts.allow_unverified {
                return Err(format!("spec.fetchStrategy.anonHttp.location: {url} has no sha256 digest; use fetchStrategy.platforms with sha256 (`kwasm-agent pin {url}` prints it), or --allow-unverified"));
            }
            vec![PlatformSpec {
                arch: arch.as_str().to_owned(),
                url: url.to_owned(),
                sha256: None,
            }]
        }
    };
    Ok(out)
}

fn listed_platform(i: usize, p: &Value, opts: &ImportOptions) -> Result<PlatformSpec, String> {
    let at = format!("spec.fetchStrategy.platforms[{i}]");
    refuse_unknown(
        p.as_object().ok_or(format!("{at}: not an object"))?,
        &at,
        &["os", "arch", "location", "sha256"],
    )?;
    if let Some(os) = p["os"].as_str().filter(|os| *os != "linux") {
        return Err(format!("{at}.os {os:?}: only linux nodes run the agent"));
    }
    let arch: Arch = p["arch"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{at}.arch: {e}"))?;
    let url = p["location"]
        .as_str()
        .ok_or(format!("{at}.location is missing"))?;
    let sha256 = p["sha256"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase);
    if sha256.is_none() && !opts.allow_unverified {
        return Err(format!("{at}: {url} has no sha256 digest; add it (`kwasm-agent pin {url}` prints it), or --allow-unverified"));
    }
    Ok(PlatformSpec {
        arch: arch.as_str().to_owned(),
        url: url.to_owned(),
        sha256,
    })
}

/// GitHub release URLs carry the tag: `.../releases/download/<tag>/<file>`.
fn version_in(platforms: &[PlatformSpec]) -> Option<String> {
    platforms.iter().find_map(|p| {
        let mut parts = p.url.split('/');
        parts.find(|s| *s == "download")?;
        parts.next().filter(|v| !v.is_empty()).map(str::to_owned)
    })
}

fn options(o: &Value) -> Result<Option<Map<String, Value>>, String> {
    let Some(map) = o.as_object() else {
        return Ok(None);
    };
    let typed = map
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) if s == "true" || s == "false" => json!(s == "true"),
                Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or(v.clone()),
                Value::Bool(_) | Value::Number(_) => v.clone(),
                other => {
                    return Err(format!(
                        "spec.containerdRuntimeOptions.{k}: expected a string, found {other}"
                    ))
                }
            };
            Ok((k.clone(), v))
        })
        .collect::<Result<Map<_, _>, String>>()?;
    Ok(Some(typed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "a923f08d91c110d2cda29fbc380273e6d0a97aa0bab455c55f613c8d5a8bfbe4";

    /// As runtime-class-manager's docs write one.
    fn documented() -> Value {
        json!({
            "apiVersion": "runtime.spinkube.dev/v1alpha1", "kind": "Shim",
            "metadata": {"name": "spin-v2", "labels": {"app.kubernetes.io/name": "spin-v2"}},
            "spec": {
                "nodeSelector": {"spin": "true"},
                "fetchStrategy": {"type": "anonymousHttp", "anonHttp": {"location":
                    "https://github.com/spinframework/containerd-shim-spin/releases/download/v0.19.0/containerd-shim-spin-v2-linux-aarch64.tar.gz"}},
                "runtimeClass": {"name": "wasmtime-spin-v2", "handler": "spin-v2"},
                "rolloutStrategy": {"type": "rolling", "rolling": {"maxUpdate": 0}},
                "containerdRuntimeOptions": {"SystemdCgroup": "true", "Level": "3", "Root": "/x"}
            }
        })
    }

    fn allow() -> ImportOptions {
        ImportOptions {
            allow_unverified: true,
            version: None,
        }
    }

    #[test]
    fn the_documented_manifest_becomes_our_shim() {
        let s = import(&documented(), &allow()).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("spin-v2"));
        assert_eq!(s.handler(), "spin-v2");
        assert_eq!(s.spec.binary, "containerd-shim-spin-v2");
        assert_eq!(s.spec.runtime_type, "io.containerd.spin.v2");
        assert_eq!(s.spec.version, "v0.19.0");
        assert_eq!(s.spec.platforms[0].arch, "arm64");
        assert_eq!(s.runtime_class_name().as_deref(), Some("wasmtime-spin-v2"));
        let o = s.spec.options.clone().unwrap();
        assert_eq!(
            (
                o["SystemdCgroup"].clone(),
                o["Level"].clone(),
                o["Root"].clone()
            ),
            (json!(true), json!(3), json!("/x"))
        );
        assert!(s.selects(&[("spin".to_owned(), "true".to_owned())].into()));
        s.to_catalog_entry(&crate::settings::Settings::default())
            .unwrap();
    }

    #[test]
    fn without_a_digest_it_is_refused_unless_allowed() {
        let err = import(&documented(), &ImportOptions::default()).unwrap_err();
        assert!(err.contains("no sha256 digest"), "{err}");
        let mut v = documented();
        v["spec"]["fetchStrategy"] = json!({"platforms": [
            {"os": "linux", "arch": "aarch64", "location": "https://h/releases/download/v1/x-aarch64.tar.gz", "sha256": DIGEST},
            {"os": "linux", "arch": "amd64", "location": "https://h/releases/download/v1/x-x86_64.tar.gz"}]});
        let err = import(&v, &ImportOptions::default()).unwrap_err();
        assert!(err.starts_with("spec.fetchStrategy.platforms[1]:"), "{err}");
        v["spec"]["fetchStrategy"]["platforms"][1]["sha256"] = DIGEST.into();
        let s = import(&v, &ImportOptions::default()).unwrap();
        assert_eq!(s.spec.platforms.len(), 2);
        assert_eq!(s.spec.platforms[0].sha256.as_deref(), Some(DIGEST));
    }

    #[rstest::rstest]
    #[case::unknown_rollout("/spec/rolloutStrategy/type", json!("blue-green"), "unknown")]
    #[case::handler_containerd_cannot_name(
        "/spec/runtimeClass/handler",
        json!("spin"),
        "containerd-shim-spin, which containerd cannot name"
    )]
    #[case::max_update_is_cluster_wide("/spec/rolloutStrategy/rolling/maxUpdate", json!(2), "cluster-wide")]
    #[case::oci_fetch("/spec/fetchStrategy/oci", json!({"ref": "x"}), "spec.fetchStrategy.oci: not a field")]
    #[case::unknown_field("/spec/extra", json!(1), "spec.extra: not a field")]
    #[case::other_api_version("/apiVersion", json!("runtime.kwasm.sh/v1beta1"), "expected apiVersion")]
    fn what_cannot_be_honoured_is_refused_with_the_reason(
        #[case] path: &str,
        #[case] value: Value,
        #[case] want: &str,
    ) {
        let mut v = documented();
        let (parent, key) = path.rsplit_once('/').unwrap();
        v.pointer_mut(parent).unwrap()[key] = value;
        let err = import(&v, &allow()).unwrap_err();
        assert!(err.contains(want), "{path}: {err}");
    }

    #[test]
    fn a_location_without_the_node_arch_is_refused() {
        let mut v = documented();
        v["spec"]["fetchStrategy"]["anonHttp"]["location"] = "https://h/shim.tar.gz".into();
        let err = import(&v, &allow()).unwrap_err();
        assert!(err.contains("no architecture"), "{err}");
    }
}
