//! Which containerd this host runs, and therefore which file to change, which socket to ask and which
//! unit to restart: plain containerd (kubeadm, kind, AKS, EKS, GKE Ubuntu), k3s, rke2, k0s, microk8s.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;

use crate::host::HostRoot;
use crate::settings::ContainerdSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Containerd,
    K3s,
    Rke2,
    K0s,
    Microk8s,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flavor {
    pub kind: Kind,
    /// The config containerd reads (for k3s/rke2: the rendered file, regenerated at every start).
    pub config: PathBuf,
    pub socket: PathBuf,
    pub unit: String,
    /// The flavor's other unit names, when `unit` is a guess (auto, and no unit file seen: a
    /// restricted pod does not see /etc/systemd); asked of systemd in turn over D-Bus.
    pub unit_alternatives: Vec<String>,
    /// The host's containerd binary, used to validate a candidate config.
    pub binary: Option<PathBuf>,
}

const K3S_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd";
const RKE2_DIR: &str = "/var/lib/rancher/rke2/agent/etc/containerd";
const MICROK8S_TEMPLATE: &str = "/var/snap/microk8s/current/args/containerd-template.toml";

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Containerd => "containerd",
            Kind::K3s => "k3s",
            Kind::Rke2 => "rke2",
            Kind::K0s => "k0s",
            Kind::Microk8s => "microk8s",
        }
    }

    /// k0s watches its drop-in directory and restarts its containerd itself.
    pub fn reloads_itself(self) -> bool {
        self == Kind::K0s
    }
}

fn kind_at(host: &HostRoot) -> Kind {
    if host.exists(format!("{K3S_DIR}/config.toml")) || host.exists("/etc/rancher/k3s") {
        Kind::K3s
    } else if host.exists(format!("{RKE2_DIR}/config.toml")) || host.exists("/etc/rancher/rke2") {
        Kind::Rke2
    } else if host.exists(MICROK8S_TEMPLATE) {
        Kind::Microk8s
    } else if host.exists("/etc/k0s") || host.exists("/var/lib/k0s") {
        Kind::K0s
    } else {
        Kind::Containerd
    }
}

/// Where a flavor keeps things unless the settings say otherwise.
struct Defaults {
    config: &'static str,
    socket: &'static str,
    /// Its systemd units, the most likely first.
    units: &'static [&'static str],
    binaries: &'static [&'static str],
}

impl Kind {
    fn defaults(self) -> Defaults {
        match self {
            Kind::Containerd => Defaults {
                config: "/etc/containerd/config.toml",
                socket: "/run/containerd/containerd.sock",
                units: &["containerd"],
                binaries: &[
                    "/usr/bin/containerd",
                    "/usr/local/bin/containerd",
                    "/bin/containerd",
                ],
            },
            Kind::K3s => Defaults {
                config: "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
                socket: "/run/k3s/containerd/containerd.sock",
                units: &["k3s", "k3s-agent"],
                binaries: &["/var/lib/rancher/k3s/data/current/bin/containerd"],
            },
            Kind::Rke2 => Defaults {
                config: "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
                socket: "/run/k3s/containerd/containerd.sock",
                units: &["rke2-server", "rke2-agent"],
                binaries: &["/var/lib/rancher/rke2/bin/containerd"],
            },
            Kind::K0s => Defaults {
                config: "/etc/k0s/containerd.d/kwasm.toml",
                socket: "/run/k0s/containerd.sock",
                units: &["k0sworker", "k0scontroller"],
                binaries: &["/var/lib/k0s/bin/containerd"],
            },
            Kind::Microk8s => Defaults {
                config: MICROK8S_TEMPLATE,
                socket: "/var/snap/microk8s/common/run/containerd.sock",
                units: &["snap.microk8s.daemon-containerd"],
                binaries: &["/snap/microk8s/current/bin/containerd"],
            },
        }
    }
}

/// Detects the flavor under the host root; explicit settings override each part.
pub fn detect(host: &HostRoot, s: &ContainerdSettings) -> anyhow::Result<Flavor> {
    let explicit_config = s.config.given().cloned();
    let kind = match &explicit_config {
        Some(p) => kind_of_path(p),
        None => kind_at(host),
    };
    let defaults = kind.defaults();
    let (unit, unit_alternatives) = unit(host, s, defaults.units);
    let binary = match s.binary.given() {
        Some(b) => Some(b.clone()),
        None => defaults
            .binaries
            .iter()
            .map(PathBuf::from)
            .find(|b| host.exists(b)),
    };
    let socket = s
        .socket
        .given()
        .cloned()
        .unwrap_or_else(|| PathBuf::from(defaults.socket));
    let config = explicit_config.unwrap_or_else(|| PathBuf::from(defaults.config));
    if !config.is_absolute() {
        bail!(
            "containerd.config must be an absolute host path, found {}",
            config.display()
        );
    }
    Ok(Flavor {
        kind,
        config,
        socket,
        unit,
        unit_alternatives,
        binary,
    })
}

/// The unit to restart: as set, else the first of the flavor's that is installed, else the most
/// likely one with the others as alternatives (a restricted pod may not see the unit files).
fn unit(host: &HostRoot, s: &ContainerdSettings, units: &[&str]) -> (String, Vec<String>) {
    if let Some(u) = s.unit.given() {
        return (u.clone(), vec![]);
    }
    match units.iter().find(|u| unit_installed(host, u)) {
        Some(u) => (u.to_string(), vec![]),
        None => (
            units[0].to_string(),
            units[1..].iter().map(|u| u.to_string()).collect(),
        ),
    }
}

/// An explicit config path still tells the flavor (a k3s template path means k3s).
fn kind_of_path(p: &Path) -> Kind {
    let s = p.to_string_lossy();
    if s.starts_with("/var/lib/rancher/k3s/") {
        Kind::K3s
    } else if s.starts_with("/var/lib/rancher/rke2/") {
        Kind::Rke2
    } else if s.starts_with("/etc/k0s/") {
        Kind::K0s
    } else if s.starts_with("/var/snap/microk8s/") {
        Kind::Microk8s
    } else {
        Kind::Containerd
    }
}

fn unit_installed(host: &HostRoot, unit: &str) -> bool {
    [
        "/etc/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ]
    .iter()
    .any(|d| host.exists(format!("{d}/{unit}.service")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Auto;

    fn host_with(files: &[&str]) -> (tempfile::TempDir, HostRoot) {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            let p = d.path().join(f.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let h = HostRoot::new(d.path());
        (d, h)
    }

    #[rstest::rstest]
    #[case::plain_containerd(&["/etc/containerd/config.toml"], Kind::Containerd, "/run/containerd/containerd.sock", "containerd")]
    #[case::k3s_agent(
        &["/var/lib/rancher/k3s/agent/etc/containerd/config.toml", "/etc/systemd/system/k3s-agent.service"],
        Kind::K3s, "/run/k3s/containerd/containerd.sock", "k3s-agent"
    )]
    #[case::rke2_agent(
        &["/var/lib/rancher/rke2/agent/etc/containerd/config.toml", "/usr/lib/systemd/system/rke2-agent.service"],
        Kind::Rke2, "/run/k3s/containerd/containerd.sock", "rke2-agent"
    )]
    #[case::k0s_worker(&["/etc/k0s/k0s.yaml"], Kind::K0s, "/run/k0s/containerd.sock", "k0sworker")]
    #[case::microk8s(
        &["/var/snap/microk8s/current/args/containerd-template.toml"],
        Kind::Microk8s, "/var/snap/microk8s/common/run/containerd.sock", "snap.microk8s.daemon-containerd"
    )]
    #[case::nothing_seen_means_plain_containerd(&[], Kind::Containerd, "/run/containerd/containerd.sock", "containerd")]
    fn detects_each_flavor_with_its_paths(
        #[case] files: &[&str],
        #[case] kind: Kind,
        #[case] socket: &str,
        #[case] unit: &str,
    ) {
        let (_d, h) = host_with(files);
        let f = detect(&h, &ContainerdSettings::default()).unwrap();
        assert_eq!(
            (f.kind, f.socket.to_str().unwrap(), f.unit.as_str()),
            (kind, socket, unit)
        );
    }

    #[test]
    fn explicit_settings_override_detection() {
        let (_d, h) = host_with(&["/var/lib/rancher/k3s/agent/etc/containerd/config.toml"]);
        let s = ContainerdSettings {
            config: Auto::Given("/srv/containerd/config.toml".into()),
            socket: Auto::Given("/srv/c.sock".into()),
            unit: Auto::Given("my-containerd".into()),
            ..Default::default()
        };
        let f = detect(&h, &s).unwrap();
        assert_eq!(f.kind, Kind::Containerd);
        assert_eq!(f.config, PathBuf::from("/srv/containerd/config.toml"));
        assert_eq!(f.socket, PathBuf::from("/srv/c.sock"));
        assert_eq!(f.unit, "my-containerd");
    }
}
