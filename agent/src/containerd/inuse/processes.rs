//! The process table's answer: a running container is owned by a shim process executing the binary,
//! so /proc answers for every namespace and client (CRI pods and ctr containers alike). With hostPID
//! the agent's /proc is the host's.

use std::path::PathBuf;

use super::ShimUser;

/// Processes executing one of `binaries` (host paths; a symlink shows as its target), including a copy
/// since replaced or removed on disk.
pub fn shims_running(binaries: &[PathBuf]) -> Vec<ShimUser> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let wanted: Vec<String> = binaries
        .iter()
        .flat_map(|b| {
            let b = b.to_string_lossy().into_owned();
            [format!("{b} (deleted)"), b]
        })
        .collect();
    let mut found: Vec<ShimUser> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|exe| wanted.iter().any(|w| exe.as_os_str() == w.as_str()))
                .unwrap_or(false)
        })
        .map(|pid| ShimUser {
            id: shim_id(pid),
            namespace: None,
            pid: Some(pid as u32),
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    // One shim serves a pod with several processes (its daemon, a container's init re-executing the
    // binary): name each shim once, by its first process.
    let mut seen = std::collections::HashSet::new();
    found.retain(|u| u.id.is_none() || seen.insert(u.id.clone()));
    found
}

fn shim_id(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.iter()
        .position(|a| a == "-id")
        .and_then(|i| args.get(i + 1).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_by_its_binary() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let me = std::process::id() as i32;
        assert!(shims_running(std::slice::from_ref(&exe))
            .iter()
            .any(|p| p.pid == Some(me as u32)));
        assert!(shims_running(&["/nonexistent/containerd-shim-x-v2".into()]).is_empty());
    }
}
