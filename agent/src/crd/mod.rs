//! The cluster's catalog as Kubernetes objects: our `Shim` (`shims.kwasm.sh/v1alpha1`, the CRD in
//! the chart's `crds/`) and what it means as a settings catalog entry (`shim`), and
//! runtime-class-manager's `Shim` (`runtime.spinkube.dev/v1alpha1`) turned into ours (`rcm`).

pub mod catalog;
pub mod rcm;
pub mod shim;

pub use shim::{Shim, ShimSpec, ShimStatus};
