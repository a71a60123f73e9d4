//! A CRI client that starts pods the way the kubelet does — RunPodSandbox with a RuntimeClass's
//! handler, then CreateContainer and StartContainer — over containerd's socket, and reads back what
//! the kubelet would: container state, exit code, and the log file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, Mount, MountPropagation, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StatusRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    socket: PathBuf,
    /// Pods get a systemd slice as their cgroup parent, as a kubelet with `--cgroup-driver=systemd`
    /// gives them (containerd then passes `slice:cri-containerd:<id>` paths to the runtime).
    pub systemd_cgroups: bool,
}

/// A container to run in a pod.
pub struct Container<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub args: Vec<&'a str>,
    pub env: Vec<(&'a str, String)>,
    /// (container path, host path)
    pub mounts: Vec<(&'a str, PathBuf)>,
    /// As the kwasm-agent DaemonSet's: privileged, read-only root filesystem.
    pub privileged: bool,
    /// Mounts propagated from the host (HostToContainer), as the chart mounts `/host`; needs a host
    /// whose `/` is a shared mount.
    pub host_propagation: bool,
    /// Mounts exactly as given (translated from a rendered pod spec).
    pub spec_mounts: Vec<Mount>,
    /// Exactly this security context (built from a rendered pod spec) instead of `privileged`'s.
    pub security: Option<LinuxContainerSecurityContext>,
}

impl<'a> Container<'a> {
    pub fn new(name: &'a str, image: &'a str) -> Self {
        Self {
            name,
            image,
            args: vec![],
            env: vec![],
            mounts: vec![],
            privileged: false,
            host_propagation: false,
            spec_mounts: vec![],
            security: None,
        }
    }
}

/// A pod sandbox as the kubelet creates it: host network (no CNI here), its own log directory.
pub struct Pod {
    pub id: String,
    config: PodSandboxConfig,
    pub log_dir: PathBuf,
}

impl Pod {
    /// A container's output from its log file (no connection to containerd needed), without the CRI
    /// log format's timestamp/stream/tag prefix.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(""))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    pub exit_code: i32,
    pub reason: String,
    pub log: String,
}

impl Cri {
    pub fn connect(socket: &Path) -> Self {
        Self::try_connect(socket).expect("CRI socket")
    }

    pub fn try_connect(socket: &Path) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = rt.block_on(kwasm_agent::containerd::cri::channel(socket))?;
        Ok(Self {
            rt,
            client: RuntimeServiceClient::new(channel),
            socket: socket.to_owned(),
            systemd_cgroups: false,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The CRI plugin answers `Status` with its runtime ready (what the kubelet waits for).
    pub fn runtime_ready(&mut self) -> bool {
        self.rt
            .block_on(self.client.status(StatusRequest { verbose: false }))
            .ok()
            .and_then(|r| r.into_inner().status)
            .map(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.r#type == "RuntimeReady" && c.status)
            })
            .unwrap_or(false)
    }

    /// The runtime handler can make a mount recursively read-only (what the kubelet reads from
    /// `Status` for `recursiveReadOnly: IfPossible`; containerd before 2.0 does not say).
    pub fn recursive_read_only(&mut self, handler: &str) -> bool {
        self.rt
            .block_on(self.client.status(StatusRequest { verbose: false }))
            .map(|r| {
                r.into_inner().runtime_handlers.iter().any(|h| {
                    h.name == handler
                        && h.features
                            .as_ref()
                            .is_some_and(|f| f.recursive_read_only_mounts)
                })
            })
            .unwrap_or(false)
    }

    /// RunPodSandbox with `handler` (a RuntimeClass's handler); logs go under `log_dir`.
    pub fn run_pod(&mut self, name: &str, handler: &str, log_dir: &Path) -> anyhow::Result<Pod> {
        self.run_pod_as(name, handler, log_dir, false)
    }

    /// `privileged`: also the host's PID namespace and a privileged sandbox, as the agent's DaemonSet.
    pub fn run_pod_as(
        &mut self,
        name: &str,
        handler: &str,
        log_dir: &Path,
        privileged: bool,
    ) -> anyhow::Result<Pod> {
        let pid = if privileged {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        };
        self.run_pod_ns(name, handler, log_dir, privileged, pid)
    }

    /// A pod as the kubelet makes one without hostPID or shareProcessNamespace: each container in
    /// its own PID namespace, nothing privileged.
    pub fn run_pod_unprivileged(
        &mut self,
        name: &str,
        handler: &str,
        log_dir: &Path,
    ) -> anyhow::Result<Pod> {
        self.run_pod_ns(name, handler, log_dir, false, NamespaceMode::Container)
    }

    fn run_pod_ns(
        &mut self,
        name: &str,
        handler: &str,
        log_dir: &Path,
        privileged: bool,
        pid: NamespaceMode,
    ) -> anyhow::Result<Pod> {
        std::fs::create_dir_all(log_dir)?;
        let host = NamespaceMode::Node as i32;
        let pid = pid as i32;
        let uid = format!("uid-{name}-{}", std::process::id());
        let cgroup_parent = if self.systemd_cgroups {
            format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"))
        } else {
            String::new()
        };
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid,
                namespace: "default".into(),
                attempt: 0,
            }),
            // No hostname: with the host's network the pod has the host's UTS namespace too.
            hostname: String::new(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: host,
                        pid,
                        ..Default::default()
                    }),
                    privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let id = self
            .rt
            .block_on(self.client.run_pod_sandbox(req))
            .map_err(|s| anyhow::anyhow!("RunPodSandbox({handler}): {}", s.message()))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            id,
            config,
            log_dir: log_dir.to_owned(),
        })
    }

    /// CreateContainer + StartContainer; returns the container ID.
    pub fn start(&mut self, pod: &Pod, c: &Container) -> anyhow::Result<String> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(container_config(pod, c)),
            sandbox_config: Some(pod.config.clone()),
        };
        let id = self
            .rt
            .block_on(self.client.create_container(req))
            .map_err(|s| anyhow::anyhow!("CreateContainer({}): {}", c.name, s.message()))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(self.client.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .map_err(|s| anyhow::anyhow!("StartContainer({}): {}", c.name, s.message()))?;
        Ok(id)
    }

    /// Polls the container's status (no exit event is awaited) until it has exited.
    pub fn wait_exited(&mut self, pod: &Pod, name: &str, id: &str, within: Duration) -> Exited {
        let deadline = Instant::now() + within;
        loop {
            let st = self
                .rt
                .block_on(self.client.container_status(ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                }))
                .expect("ContainerStatus")
                .into_inner()
                .status
                .expect("a status");
            if st.state == ContainerState::ContainerExited as i32 {
                return Exited {
                    exit_code: st.exit_code,
                    reason: st.reason,
                    log: self.log(pod, name),
                };
            }
            assert!(
                Instant::now() < deadline,
                "container {name} did not exit within {within:?} (state {})",
                st.state
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls the container's log (every 2 ms) until it holds `needle`.
    pub fn wait_output(&self, pod: &Pod, name: &str, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log(pod, name).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{name} printed no {needle:?} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The container's output, without the CRI log format's timestamp/stream/tag prefix.
    pub fn log(&self, pod: &Pod, name: &str) -> String {
        pod.log(name)
    }

    /// The PID of a running container's process, in containerd's PID namespace.
    pub fn container_pid(&mut self, id: &str) -> i64 {
        self.verbose_info(id)["pid"].as_i64().unwrap_or(0)
    }

    /// The cgroup path containerd gave a container's runtime: `/k8s.io/<id>` with the cgroupfs
    /// driver, `<slice>:cri-containerd:<id>` with the systemd driver.
    pub fn cgroups_path(&mut self, id: &str) -> String {
        self.verbose_info(id)["runtimeSpec"]["linux"]["cgroupsPath"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The `info` document of a container's verbose status (what containerd tells the kubelet).
    fn verbose_info(&mut self, id: &str) -> serde_json::Value {
        let st = self
            .rt
            .block_on(self.client.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            }))
            .expect("ContainerStatus")
            .into_inner();
        serde_json::from_str(st.info.get("info").map(String::as_str).unwrap_or("{}"))
            .unwrap_or_default()
    }

    pub fn remove_pod(&mut self, pod: &Pod) -> anyhow::Result<()> {
        self.rt
            .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }))
            .map_err(|s| anyhow::anyhow!("StopPodSandbox: {}", s.message()))?;
        self.rt
            .block_on(self.client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            }))
            .map_err(|s| anyhow::anyhow!("RemovePodSandbox: {}", s.message()))?;
        Ok(())
    }

    /// Stops and removes every pod sandbox (a test's teardown, whatever state it stopped in).
    pub fn remove_all_pods(&mut self) {
        let Ok(list) = self.rt.block_on(
            self.client
                .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        ) else {
            return;
        };
        for p in list.into_inner().items {
            let id = p.id;
            let _ = self
                .rt
                .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                }));
            let _ = self.rt.block_on(
                self.client
                    .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }),
            );
        }
    }
}

/// What CRI is asked to create for `c` in `pod`.
fn container_config(pod: &Pod, c: &Container) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: c.name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: c.image.into(),
            ..Default::default()
        }),
        args: c.args.iter().map(|a| a.to_string()).collect(),
        envs: c
            .env
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: v.clone(),
            })
            .collect(),
        mounts: c
            .mounts
            .iter()
            .map(|(cp, hp)| Mount {
                container_path: cp.to_string(),
                host_path: hp.to_string_lossy().into_owned(),
                propagation: if c.host_propagation {
                    MountPropagation::PropagationHostToContainer as i32
                } else {
                    MountPropagation::PropagationPrivate as i32
                },
                ..Default::default()
            })
            .chain(c.spec_mounts.iter().cloned())
            .collect(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: pod
                    .config
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.clone()),
                ..c.security.clone().unwrap_or(LinuxContainerSecurityContext {
                    privileged: c.privileged,
                    readonly_rootfs: c.privileged,
                    ..Default::default()
                })
            }),
            ..Default::default()
        }),
        log_path: format!("{}.log", c.name),
        annotations: HashMap::new(),
        ..Default::default()
    }
}
