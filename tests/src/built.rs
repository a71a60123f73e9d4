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
