//! The labels and the annotation the agent reports on its Node.

pub const PROVISIONED_LABEL: &str = "kwasm.sh/kwasm-provisioned";
pub const STATUS_ANNOTATION: &str = "kwasm.sh/kwasm-status";
/// `kwasm.sh/shim.<name>`: "true" once that handler is proven loaded (its RuntimeClass selects it).
pub const SHIM_READY_PREFIX: &str = "kwasm.sh/shim.";
/// `kwasm.sh/version.<name>`: the shim's installed version.
pub const SHIM_VERSION_PREFIX: &str = "kwasm.sh/version.";

pub fn shim_ready_label(name: &str) -> String {
    format!("{SHIM_READY_PREFIX}{name}")
}

pub fn shim_version_label(name: &str) -> String {
    format!("{SHIM_VERSION_PREFIX}{name}")
}
