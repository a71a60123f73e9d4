//! Verified shim binaries on the host: decide each shim's step (pure), fetch it or take it from the
//! content-addressed cache, verify, unpack, prove it starts, install it atomically, link it by runtime
//! name.

pub mod digest;
pub mod fetch;
mod installed;
pub mod link;
pub mod probe;
pub mod provenance;
pub mod source;
pub mod step;
mod store;
pub mod unpack;

pub use installed::{InstalledShim, SignatureRecord};
pub use step::{ArtifactFacts, ArtifactStep};
pub use store::{ArtifactStore, Installed};
