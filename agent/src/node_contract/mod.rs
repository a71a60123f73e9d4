//! The Node contract: every key the agent reads or writes on a Node object — the trigger (annotation
//! or label) and the shims annotation it obeys, the uninstall request, the labels it reports and its
//! status document. The node controller writes them and the catalog controller counts them; both
//! build on this module, neither on the other.

pub mod labels;
pub mod status;
pub mod trigger;
pub mod uninstall_request;
