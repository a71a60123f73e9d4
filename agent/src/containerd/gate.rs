//! Who may restart containerd now. A one-shot command restarts at once (`Ungated`); the node controller
//! passes a gate that paces restarts across the cluster, so a fleet never loses every node's CRI at
//! the same moment. The gate is entered once the new config is validated and written, right before the
//! restart, and left once containerd proved itself (or was rolled back): the whole time CRI may be
//! down, and no longer.

use futures_util::future::BoxFuture;

/// Held while containerd may be down; `release` lets the next node go.
pub trait Permit: Send {
    fn release(self: Box<Self>) -> BoxFuture<'static, ()>;
}

pub trait RestartGate: Send + Sync {
    /// Waits for a turn (saying why while it does), then returns the permit.
    fn enter(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Permit>>>;
}

/// No pacing: one host on its own.
pub struct Ungated;

struct Free;

impl Permit for Free {
    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

impl RestartGate for Ungated {
    fn enter(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn Permit>>> {
        Box::pin(async { Ok(Box::new(Free) as Box<dyn Permit>) })
    }
}
