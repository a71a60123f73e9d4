//! kwasm-agent: installs verified WebAssembly containerd shims on a node, wires them into containerd,
//! and undoes it exactly. The contracts are in docs/ (commands, settings, the Node).
//!
//! The layers, each using only those below it (`tests/tests/layering.rs` walks the imports):
//! 1. `cli`: the one-shot commands, and the entry to the two controllers;
//! 2. `controller` (the node controller, `run`) and `catalog` (the Shim objects' controller,
//!    `catalog`), side by side: neither uses the other;
//! 3. `node_contract` (the keys, labels and status document on a Node, shared by both controllers),
//!    `crd` (Shim objects as catalog entries), `lease` (holding a Lease), `kube_client`, `health`
//!    (the probes' HTTP server);
//! 4. `engine`: the host engine — facts → one plan → carry out → prove — built on
//! 5. `artifact` (verified binaries) and `containerd` (config, restart, CRI proof), built on
//! 6. `host` (host root, atomic writes, lock, host commands), `settings`, `arch`, `backoff`, `clock`,
//!    `timeline`, `telemetry`.

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
pub mod health;
pub mod host;
pub mod kube_client;
pub mod lease;
pub mod node_contract;
pub mod settings;
pub mod telemetry;
pub mod timeline;
