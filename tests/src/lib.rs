//! Test support for kwasm-agent's integration tests: real parts only (loopback HTTP, the real agent
//! binary, a real containerd, a Kubernetes API server built from Kubernetes' own libraries).

pub mod agent;
pub mod api_load;
pub mod archive;
pub mod artifact_server;
pub mod audit;
pub mod built;
pub mod containerd;
pub mod cri;
pub mod daemonset;
pub mod fault;
pub mod fleet_parts;
pub mod helm;
pub mod job_kubelet;
pub mod kube_api;
pub mod kubelets;
pub mod node_host;
pub mod oci;
pub mod pod_kubelet;
pub mod rootfs;
pub mod sandbox;
pub mod sigstore;
pub mod systemd_node;
pub mod tcp_proxy;
pub mod tls_server;
pub mod workloads;
