//! Proof that a verified shim binary can start on this host before containerd is ever pointed at it:
//! every containerd shim answers `-v` with its version, so running it that way (as the host, from the
//! staging directory) catches a binary for another architecture, a missing dynamic loader or library,
//! or a file that is not a program at all.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::host::exec::HostExec;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `<binary> -v` as the host; returns the first line the shim printed.
pub async fn shim_starts(exec: &HostExec, binary: &Path) -> anyhow::Result<String> {
    let argv = [binary.to_string_lossy().into_owned(), "-v".to_owned()];
    let out = exec.run_in_root(&argv, TIMEOUT).await.context(
        "the binary does not start on this host (wrong architecture, or not a program?)",
    )?;
    if !out.success {
        bail!(
            "the binary does not start on this host: `{} -v` exited with {} ({}); wrong architecture or a missing library?",
            binary.display(),
            out.code.map_or("a signal".to_owned(), |c| format!("status {c}")),
            out.tail(3)
        );
    }
    Ok(out
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned())
}
