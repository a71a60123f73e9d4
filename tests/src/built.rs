//! What scripts/test.sh builds before the tests and passes in environment variables (the wasm shim's
//! archive, the agent's image). A test without one is skipped — except under CI, where that is a
//! failure.

use std::path::PathBuf;

/// The path in `$var`, which `script` prints last; None (the test skips) when unset outside CI.
pub fn path_from_env(var: &str, script: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(p.into()),
        None => {
            let msg =
                format!("{var} is not set: run scripts/test.sh, or {script}, which prints it");
            assert!(std::env::var_os("CI").is_none(), "{msg}");
            eprintln!("skipped: {msg}");
            None
        }
    }
}

/// The test wasm shim's release archive (tests/wasm-shim).
pub fn wasm_shim_archive() -> Option<Vec<u8>> {
    let p = path_from_env("KWASM_WASM_SHIM_ARCHIVE", "scripts/build-wasm-shim.sh")?;
    Some(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// The agent's image as an OCI archive.
pub fn image_archive() -> Option<PathBuf> {
    path_from_env("KWASM_IMAGE_ARCHIVE", "scripts/build-image.sh")
}

/// The directory holding the tests' API server and etcd (scripts/kube-apiserver.sh, which prints
/// it): `$KWASM_KUBE_APISERVER`, or the script run once by this process (cached: a second run only
/// prints the directory; the first builds for several minutes).
pub fn kube_apiserver_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KWASM_KUBE_APISERVER") {
            return dir.into();
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new("bash")
            .arg(root.join("scripts/kube-apiserver.sh"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("bash scripts/kube-apiserver.sh");
        assert!(out.status.success(), "scripts/kube-apiserver.sh failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .last()
            .expect("the script prints its directory")
            .into()
    })
    .clone()
}

/// Prometheus and promtool (scripts/prometheus.sh: Debian's package, unpacked): `$KWASM_PROMETHEUS`,
/// or the script run once by this process.
pub fn prometheus_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KWASM_PROMETHEUS") {
            return dir.into();
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new("bash")
            .arg(root.join("scripts/prometheus.sh"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("bash scripts/prometheus.sh");
        assert!(out.status.success(), "scripts/prometheus.sh failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("the script prints its directory")
            .into()
    })
    .clone()
}
