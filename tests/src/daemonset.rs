//! The agent's DaemonSet exactly as the chart renders it (manifests/deploy/, read with the real
//! kubectl), turned into what the kubelet sends over CRI for its pod: the container's security
//! context, its hostPath mounts, whether it shares the host's PID namespace — and its ConfigMap's
//! settings. Anything in the rendered pod this translation does not know fails the test rather than
//! being dropped, so a chart change cannot make the pod under test weaker than the one users get.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    Capability, Int64Value, LinuxContainerSecurityContext, Mount, MountPropagation, SecurityProfile,
};
use serde_json::Value;

/// What the kubelet masks and makes read-only in every container that is not privileged
/// (k8s.io/kubernetes pkg/securitycontext: DefaultProcMount).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// One hostPath volume as mounted into the agent's container.
#[derive(Debug, Clone)]
pub struct HostMount {
    pub container_path: String,
    pub host_path: String,
    pub read_only: bool,
    /// The hostPath `type` ("" when unset).
    pub kind: String,
    pub host_to_container: bool,
    /// `recursiveReadOnly` ("" when unset).
    pub recursive_read_only: String,
}

#[derive(Debug)]
pub struct RenderedAgent {
    pub host_pid: bool,
    pub security: LinuxContainerSecurityContext,
    pub host_mounts: Vec<HostMount>,
    /// Where the ConfigMap (the settings file) is mounted.
    pub config_dir: String,
    pub settings: toml_edit::DocumentMut,
}

impl RenderedAgent {
    /// `file`: a manifest under manifests/deploy/.
    pub fn load(file: &str) -> Self {
        let objects = rendered(file);
        let ds = objects
            .iter()
            .find(|o| o["kind"] == "DaemonSet")
            .expect("a DaemonSet");
        let spec = &ds["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        assert_eq!(container["name"], "agent");
        let (host_mounts, config_dir) = mounts(spec, container);
        let settings = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap")
            .and_then(|cm| cm["data"]["config.toml"].as_str())
            .expect("a ConfigMap with config.toml")
            .parse()
            .unwrap();
        Self {
            host_pid: spec["hostPID"].as_bool().unwrap_or(false),
            security: security_context(&container["securityContext"]),
            host_mounts,
            config_dir,
            settings,
        }
    }

    /// The CRI mounts: every hostPath volume, and `config` (this test's settings directory) where the
    /// ConfigMap goes. As the kubelet does, a `DirectoryOrCreate` path is created on the node
    /// (`node_path` maps a node path to where this process reaches it); `Directory` and `File` must
    /// exist. `rro`: the runtime handler makes mounts recursively read-only (for `IfPossible`).
    pub fn cri_mounts(
        &self,
        node_path: impl Fn(&str) -> PathBuf,
        config: &Path,
        rro: bool,
    ) -> Vec<Mount> {
        let mut out: Vec<Mount> = self
            .host_mounts
            .iter()
            .map(|m| {
                let on_node = node_path(&m.host_path);
                match m.kind.as_str() {
                    "DirectoryOrCreate" => std::fs::create_dir_all(&on_node).unwrap(),
                    "Directory" => assert!(on_node.is_dir(), "{} is not on the node", m.host_path),
                    "File" => assert!(on_node.is_file(), "{} is not on the node", m.host_path),
                    "" => {}
                    other => panic!("hostPath type {other} is not translated"),
                }
                let recursive_read_only = match m.recursive_read_only.as_str() {
                    "" | "Disabled" => false,
                    "IfPossible" => rro,
                    "Enabled" => {
                        assert!(
                            rro,
                            "the runtime cannot make {} recursively read-only",
                            m.host_path
                        );
                        true
                    }
                    other => panic!("recursiveReadOnly {other} is not translated"),
                };
                Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.read_only,
                    recursive_read_only,
                    propagation: if m.host_to_container {
                        MountPropagation::PropagationHostToContainer
                    } else {
                        MountPropagation::PropagationPrivate
                    } as i32,
                    ..Default::default()
                }
            })
            .collect();
        out.push(Mount {
            container_path: self.config_dir.clone(),
            host_path: config.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        });
        out
    }
}

/// Every object of a rendered manifest, as JSON, through `kubectl label --local` (the real
/// kubectl's own parsing of the YAML).
fn rendered(file: &str) -> Vec<Value> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/deploy")
        .join(file);
    let out = Command::new("kubectl")
        .args(["label", "--local", "-o", "json", "kwasm.sh/test=1", "-f"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect()
}

/// The container's `securityContext` as the kubelet passes it to CRI.
fn security_context(sc: &Value) -> LinuxContainerSecurityContext {
    let fields = sc.as_object().expect("a securityContext");
    let mut out = LinuxContainerSecurityContext::default();
    for (key, value) in fields {
        match key.as_str() {
            "privileged" => out.privileged = value.as_bool().unwrap(),
            "readOnlyRootFilesystem" => out.readonly_rootfs = value.as_bool().unwrap(),
            "allowPrivilegeEscalation" => out.no_new_privs = !value.as_bool().unwrap(),
            "runAsUser" => {
                out.run_as_user = Some(Int64Value {
                    value: value.as_i64().unwrap(),
                })
            }
            "capabilities" => {
                let names = |k: &str| -> Vec<String> {
                    value[k]
                        .as_array()
                        .map(|a| a.iter().map(|c| c.as_str().unwrap().to_owned()).collect())
                        .unwrap_or_default()
                };
                out.capabilities = Some(Capability {
                    add_capabilities: names("add"),
                    drop_capabilities: names("drop"),
                    ..Default::default()
                });
            }
            "seccompProfile" => {
                assert_eq!(value["type"], "RuntimeDefault", "seccomp {value}");
                out.seccomp = Some(SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    ..Default::default()
                });
            }
            other => panic!("securityContext.{other} is not translated"),
        }
    }
    if out.seccomp.is_none() {
        // No profile asked for: the kubelet runs the container unconfined.
        out.seccomp = Some(SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            ..Default::default()
        });
    }
    if !out.privileged {
        out.masked_paths = MASKED_PATHS.iter().map(|p| p.to_string()).collect();
        out.readonly_paths = READONLY_PATHS.iter().map(|p| p.to_string()).collect();
    }
    out
}

/// The container's hostPath mounts, and where its configMap volume goes.
fn mounts(spec: &Value, container: &Value) -> (Vec<HostMount>, String) {
    let volumes = spec["volumes"].as_array().expect("volumes");
    let mut host = vec![];
    let mut config_dir = None;
    for vm in container["volumeMounts"].as_array().expect("volumeMounts") {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == vm["name"])
            .unwrap_or_else(|| panic!("no volume for {vm}"));
        let path = vm["mountPath"].as_str().unwrap().to_owned();
        let read_only = vm["readOnly"].as_bool().unwrap_or(false);
        if let Some(hp) = volume.get("hostPath") {
            let propagation = vm["mountPropagation"].as_str().unwrap_or("None");
            assert!(
                matches!(propagation, "None" | "HostToContainer"),
                "mountPropagation {propagation} is not translated"
            );
            host.push(HostMount {
                container_path: path,
                host_path: hp["path"].as_str().unwrap().to_owned(),
                read_only,
                kind: hp["type"].as_str().unwrap_or("").to_owned(),
                host_to_container: propagation == "HostToContainer",
                recursive_read_only: vm["recursiveReadOnly"].as_str().unwrap_or("").to_owned(),
            });
        } else if volume.get("configMap").is_some() {
            assert!(read_only, "the settings are mounted read-only");
            config_dir = Some(path);
        } else {
            panic!("volume {volume} is not translated");
        }
    }
    (host, config_dir.expect("a configMap volume"))
}
