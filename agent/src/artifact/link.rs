//! Links that let clients name a runtime instead of a CRI handler: containerd resolves a runtime name
//! such as `io.containerd.wasmtime.v1` to a binary `containerd-shim-wasmtime-v1` on its PATH. With
//! `containerd.link_dir` set, each installed shim is linked there under that name. The agent owns a
//! link only while it points at the agent's binary; a file someone else put there is left alone.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::host::HostRoot;

/// The binary name containerd derives from a runtime name (`<prefix>.<name>.<version>` →
/// `containerd-shim-<name>-<version>`); None when the runtime name has no such form.
pub fn shim_name_for(runtime_type: &str) -> Option<String> {
    let parts: Vec<&str> = runtime_type.split('.').collect();
    match parts.as_slice() {
        [.., name, version] if parts.len() >= 3 && !name.is_empty() && !version.is_empty() => {
            Some(format!("containerd-shim-{name}-{version}"))
        }
        _ => None,
    }
}

pub enum Linked {
    /// The link exists and points at the binary (host path of the link).
    Ours(PathBuf),
    /// Something else has the name; left untouched.
    Taken(PathBuf),
}

/// Make `<link_dir>/<name>` a symlink to `binary` (both host paths).
pub fn ensure(
    host: &HostRoot,
    link_dir: &Path,
    name: &str,
    binary: &Path,
) -> anyhow::Result<Linked> {
    let link = link_dir.join(name);
    let real = host.resolve(&link)?;
    match std::fs::read_link(&real) {
        Ok(to) if to == binary => return Ok(Linked::Ours(link)),
        Ok(_) => return Ok(Linked::Taken(link)),
        Err(_) if real.symlink_metadata().is_ok() => return Ok(Linked::Taken(link)),
        Err(_) => {}
    }
    let dir = host.resolve(link_dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // A temp link renamed into place: the name never points anywhere half-made.
    let tmp = dir.join(format!(".{name}.kwasm-tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(binary, &tmp)
        .with_context(|| format!("creating a link in {}", dir.display()))?;
    std::fs::rename(&tmp, &real).with_context(|| format!("creating {}", link.display()))?;
    crate::host::atomic::sync_dir(&dir)?;
    Ok(Linked::Ours(link))
}

/// Remove `link` (a host path) if it still points at `binary`.
pub fn remove(host: &HostRoot, link: &Path, binary: &Path) -> anyhow::Result<()> {
    let real = host.resolve(link)?;
    if std::fs::read_link(&real).is_ok_and(|to| to == binary) {
        crate::host::atomic::remove(&real)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_map_to_shim_binaries_as_containerd_does() {
        assert_eq!(
            shim_name_for("io.containerd.wasmtime.v1").as_deref(),
            Some("containerd-shim-wasmtime-v1")
        );
        assert_eq!(
            shim_name_for("io.containerd.spin.v2").as_deref(),
            Some("containerd-shim-spin-v2")
        );
        assert_eq!(shim_name_for("spin"), None);
        assert_eq!(shim_name_for("io.containerd."), None);
    }

    #[test]
    fn links_only_what_is_free_and_removes_only_its_own() {
        let d = tempfile::tempdir().unwrap();
        let host = HostRoot::new(d.path());
        let bin = Path::new("/opt/kwasm/bin/containerd-shim-x-v1");
        let dir = Path::new("/usr/local/bin");
        let Linked::Ours(link) = ensure(&host, dir, "containerd-shim-x-v1", bin).unwrap() else {
            panic!("expected a new link");
        };
        assert_eq!(
            std::fs::read_link(host.resolve(&link).unwrap()).unwrap(),
            bin
        );
        assert!(matches!(
            ensure(&host, dir, "containerd-shim-x-v1", bin).unwrap(),
            Linked::Ours(_)
        ));
        // Someone else's file of that name stays.
        std::fs::write(
            host.resolve("/usr/local/bin/containerd-shim-y-v1").unwrap(),
            b"theirs",
        )
        .unwrap();
        assert!(matches!(
            ensure(&host, dir, "containerd-shim-y-v1", bin).unwrap(),
            Linked::Taken(_)
        ));
        remove(&host, Path::new("/usr/local/bin/containerd-shim-y-v1"), bin).unwrap();
        assert!(host.exists("/usr/local/bin/containerd-shim-y-v1"));
        remove(&host, &link, bin).unwrap();
        assert!(host.resolve(&link).unwrap().symlink_metadata().is_err());
    }
}
