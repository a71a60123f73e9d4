//! containerd: find its config, edit it, restart it, prove the handlers loaded, roll back.

pub mod change;
pub mod config;
pub mod cri;
pub mod flavor;
pub mod inuse;
pub mod ownership;
pub mod restart;
pub mod template;
