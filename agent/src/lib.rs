//! kwasm-agent: installs verified WebAssembly containerd shims on a node, wires them into containerd,
//! and undoes it exactly. See the README for the contracts.

pub mod arch;
pub mod artifact;
pub mod cli;
pub mod containerd;
pub mod engine;
pub mod host;
pub mod metrics;
pub mod node;
pub mod plan;
pub mod server;
pub mod settings;
pub mod telemetry;
