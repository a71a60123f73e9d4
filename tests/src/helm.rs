//! Helm's own engine for the tests (helm-python-sdk: Helm v4's library, in the chart tests' venv that
//! scripts/test.sh makes), through tests/chart/helm_cli.py: install, upgrade, uninstall and test
//! against a cluster, or a template rendered without one.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kube_api::KubeApi;

/// The venv's Python, or None (the test skips; under CI that is a failure).
pub fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv-chart/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} missing: run scripts/test.sh",
        venv.display()
    );
    eprintln!(
        "skipped: {} missing (scripts/test.sh makes it)",
        venv.display()
    );
    None
}

fn run(
    python: &Path,
    kubeconfig: &Path,
    verb: &str,
    values: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("chart/helm_cli.py");
    let out = Command::new(python)
        .arg(script)
        .arg(kubeconfig)
        .args([verb, "kwasm-agent", &values.to_string()])
        .output()
        .expect("helm_cli.py");
    match out.status.success() {
        true => Ok(serde_json::from_slice(&out.stdout).unwrap_or_default()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// `helm install|upgrade|uninstall|test kwasm-agent` with `values`, as the cluster's administrator.
pub fn helm(
    python: &Path,
    api: &KubeApi,
    verb: &str,
    values: serde_json::Value,
) -> Result<serde_json::Value, String> {
    run(python, &api.kubeconfig, verb, &values)
}

/// `helm template`: the objects the chart renders with `values` (hooks left out).
pub fn template(python: &Path, values: serde_json::Value) -> Vec<serde_json::Value> {
    let docs = run(python, Path::new("-"), "template", &values).unwrap_or_else(|e| panic!("{e}"));
    docs.as_array().cloned().unwrap_or_default()
}
