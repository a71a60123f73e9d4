//! What the fleet tests and benchmarks share: processes stopped when their owner goes, the catalog
//! controller started against the API server, and the restart windows the nodes' restart scripts log ("down <ns>" / "up <ns>"), with the most
//! containerds down at the same instant.

use std::path::Path;
use std::process::{Child, Stdio};

use crate::agent::agent;
use crate::kube_api::{KubeApi, CATALOG_SA, NAMESPACE};

/// A child process killed and reaped when this goes (an agent, the catalog controller).
pub struct Process(pub Child);

impl Process {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kwasm-agent catalog` with its Lease in the chart's namespace and the chart's service account,
/// folding status writes by `status_interval`; its log in `log` (None: dropped).
pub fn spawn_catalog(
    api: &KubeApi,
    dir: &Path,
    status_interval: &str,
    log: Option<&Path>,
) -> Process {
    let settings = dir.join("catalog.toml");
    std::fs::write(
        &settings,
        format!(
            "[catalog]\nlease_namespace = \"{NAMESPACE}\"\nstatus_interval = \"{status_interval}\"\n"
        ),
    )
    .unwrap();
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    agent(&["catalog", "--config", settings.to_str().unwrap()])
        .env(
            "KUBECONFIG",
            api.service_account_kubeconfig(CATALOG_SA, "catalog-0", None),
        )
        .env("POD_NAME", "catalog-0")
        .env("KWASM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map(Process)
        .unwrap()
}

/// (down, up) in nanoseconds, per restart a node's script logged.
pub fn restart_windows(log: &Path) -> Vec<(u128, u128)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    let mut down = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("down", t)) => down = t.parse().ok(),
            Some(("up", t)) => {
                if let (Some(d), Ok(u)) = (down.take(), t.parse()) {
                    out.push((d, u));
                }
            }
            _ => {}
        }
    }
    out
}

/// How many containerds are down just after each moment one goes down or comes up, in time order.
fn down_over_time(all: &[(u128, u128)]) -> impl Iterator<Item = (u128, usize)> {
    let mut edges: Vec<(u128, i32)> = all.iter().flat_map(|(d, u)| [(*d, 1), (*u, -1)]).collect();
    // At equal times an "up" comes before a "down": touching windows do not overlap.
    edges.sort_by_key(|(t, delta)| (*t, *delta));
    let mut now = 0i32;
    edges.into_iter().map(move |(t, delta)| {
        now += delta;
        (t, now.max(0) as usize)
    })
}

/// The most containerds down at the same instant.
pub fn max_overlap(all: &[(u128, u128)]) -> usize {
    down_over_time(all).map(|(_, n)| n).max().unwrap_or(0)
}

/// When a fleet would finish with `slots` slots and no time lost between restarts: the nodes served
/// in the order they became ready to restart (`ready`, seconds), each restart taking `restart`
/// seconds. The ideal once each node's own work before its restart — which no pacing can hurry — is
/// counted.
pub fn paced_finish(ready: &[f64], slots: usize, restart: f64) -> f64 {
    let mut ready = ready.to_vec();
    ready.sort_by(f64::total_cmp);
    let mut free = vec![f64::NEG_INFINITY; slots.max(1)];
    let mut finish = f64::NEG_INFINITY;
    for at in ready {
        let (slot, free_at) = free
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        free[slot] = at.max(free_at) + restart;
        finish = finish.max(free[slot]);
    }
    finish
}

/// The first moment more than `limit` containerds were down, if ever.
pub fn first_over(all: &[(u128, u128)], limit: usize) -> Option<u128> {
    down_over_time(all)
        .find(|(_, n)| *n > limit)
        .map(|(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::paced_finish;

    #[test]
    fn nodes_ready_together_finish_in_rounds_and_late_ones_when_they_are_ready() {
        assert_eq!(paced_finish(&[0.0; 10], 2, 1.0), 5.0);
        assert_eq!(paced_finish(&[0.0; 9], 2, 1.0), 5.0);
        // Three slots: two ready at once, the third node ready only after both finished.
        assert_eq!(paced_finish(&[0.0, 0.0, 4.0], 3, 1.0), 5.0);
        // One slot: the second waits for the first.
        assert_eq!(paced_finish(&[0.5, 0.0], 1, 1.0), 2.0);
    }
}
