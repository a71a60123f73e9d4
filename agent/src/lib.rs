//! kwasm-agent: installs verified WebAssembly containerd shims on a node, wires them into containerd,
//! and undoes it exactly. See the README for the contracts.
//!
//! The layers, each using only those below it:
//! - `cli`, `controller`: the one-shot commands and the node controller (`run`), both driving
//! - `engine`: the host engine — facts → one plan → carry out → prove — built on
//! - `artifact` (verified binaries) and `containerd` (config, restart, CRI proof), built on
//! - `host` (host root, atomic writes, lock, host commands), `settings`, `arch`, `backoff`, `clock`.
//!
//! Beside the node controller, `catalog` (the Shim objects' controller, `kwasm-agent catalog`); both
//! read Shim objects through `crd`, which sits on `settings`.

pub mod arch;
pub mod artifact;
pub mod backoff;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod containerd;
pub mod controller;
pub mod crd;
pub mod engine;
pub mod host;
pub mod kube_client;
pub mod lease;
pub mod settings;
pub mod telemetry;
