//! What the fleet tests and benchmarks share: processes stopped when their owner goes, the catalog
//! controller started against the API server, a fleet of sandbox nodes with real agents whose
//! restarts take as long as a real node's, and the restart windows the nodes' restart scripts log
//! ("down <ns>" / "up <ns>"), with the most containerds down at the same instant.

use std::path::Path;
use std::process::{Child, Stdio};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::agent::{agent, RunningAgent, WAIT};
use crate::kube_api::{free_port, KubeApi, CATALOG_SA, NAMESPACE};
use crate::node_host::NodeHost;

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

/// A node of a test fleet: its sandbox host (a real containerd with a live container), its agent, and
/// the log of its restart windows.
pub struct FleetNode {
    pub name: String,
    /// Before `host`: fields drop in order, and an agent still running when its host root is
    /// removed would make it again outside any test's directory.
    pub agent: RunningAgent,
    pub host: NodeHost,
    pub live: i32,
    pub windows: PathBuf,
    pub port: u16,
}

/// How a test fleet paces and restarts.
pub struct FleetSpec {
    pub nodes: usize,
    /// `max_concurrent_restarts` as TOML: `2` or `"50%"`.
    pub pacing: String,
    pub lease_duration: &'static str,
    /// How long a restart takes (a sandbox containerd restarts in a tenth of a second).
    pub restart_seconds: f64,
    /// More of the agents' `[agent]` table.
    pub agent: &'static str,
}

impl FleetSpec {
    pub fn new(nodes: usize, slots: usize) -> Self {
        Self {
            nodes,
            pacing: slots.to_string(),
            lease_duration: "30s",
            restart_seconds: 0.7,
            agent: "",
        }
    }
}

/// The fleet: node `i`'s agent reaches the server with `kubeconfig(i)` and runs with `env(i)`.
pub fn fleet_with(
    api: &KubeApi,
    spec: &FleetSpec,
    kubeconfig: impl Fn(usize) -> PathBuf,
    env: impl Fn(usize) -> Vec<(String, String)>,
) -> Vec<FleetNode> {
    (0..spec.nodes)
        .map(|i| {
            let name = format!("n{i}");
            api.add_node(&name, "amd64");
            let port = free_port();
            let host = NodeHost::with(|_| {
                format!(
                    "[agent]\nlisten = \"127.0.0.1:{port}\"\nresync = \"2s\"\nmax_backoff = \"2s\"\n{}\n\n[fleet]\nmax_concurrent_restarts = {}\nlease_namespace = \"{NAMESPACE}\"\nlease_duration = \"{}\"\n",
                    spec.agent, spec.pacing, spec.lease_duration
                )
            });
            let windows = timed_restart(&host, spec.restart_seconds);
            let live = host.cd.run_container("live", None);
            let agent = RunningAgent::start_with(&host, &kubeconfig(i), &name, port, &env(i));
            FleetNode { name, host, agent, live, windows, port }
        })
        .collect()
}

pub fn fleet(api: &KubeApi, spec: &FleetSpec) -> Vec<FleetNode> {
    fleet_with(
        api,
        spec,
        |i| api.agent_kubeconfig(&format!("n{i}")),
        |_| Vec::new(),
    )
}

/// The node's restart command, wrapped to log when containerd goes down and when it answers again —
/// as `systemctl restart` returns only once a notify-type unit is up — and made as slow as a real
/// node's restart. While a file `hold` exists beside the log, the restart has not begun yet (held at
/// most a minute); the script's PID is in `restart.pid`, to stop one whose agent a test killed.
fn timed_restart(host: &NodeHost, seconds: f64) -> PathBuf {
    let log = host.sb.path().join("down-windows.log");
    let wrapper = host.cd.dir.join("timed-restart.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho $$ > {pid}\ni=0; while [ -e {hold} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\necho \"down $(date +%s%N)\" >> {log}\nsleep {seconds}\n{restart}\nuntil ctr --address {sock} version >/dev/null 2>&1; do sleep 0.005; done\necho \"up $(date +%s%N)\" >> {log}\n",
            pid = host.sb.path().join("restart.pid").display(),
            hold = host.sb.path().join("hold").display(),
            log = log.display(),
            restart = host.cd.restart_script().display(),
            sock = host.cd.socket.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let settings = std::fs::read_to_string(&host.sb.settings).unwrap().replace(
        host.cd.restart_script().to_str().unwrap(),
        wrapper.to_str().unwrap(),
    );
    host.sb.write_settings(&settings);
    log
}

impl FleetNode {
    /// Hold this node's next restart before it begins (see `timed_restart`), or let it go.
    pub fn hold(&self, held: bool) {
        let hold = self.host.sb.path().join("hold");
        match held {
            true => std::fs::write(hold, "").unwrap(),
            false => {
                let _ = std::fs::remove_file(hold);
            }
        }
    }

    /// Kill its agent (SIGKILL), and the restart script it left running, if any.
    pub fn kill_agent(&mut self) {
        self.agent.kill();
        let pid =
            std::fs::read_to_string(self.host.sb.path().join("restart.pid")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Its agent started again (the DaemonSet's next pod), as before.
    pub fn restart_agent(&mut self, api: &KubeApi) {
        self.agent = RunningAgent::start(
            &self.host,
            &api.agent_kubeconfig(&self.name),
            &self.name,
            self.port,
        );
    }

    /// The phase its status annotation shows.
    pub fn phase(&self, api: &KubeApi) -> Option<String> {
        let node = api.node(&self.name);
        let status = node["metadata"]["annotations"]["kwasm.sh/kwasm-status"]
            .as_str()?
            .to_owned();
        let doc: serde_json::Value = serde_json::from_str(&status).ok()?;
        doc["phase"].as_str().map(str::to_owned)
    }

    pub fn ready(&self, api: &KubeApi) -> bool {
        api.provisioned_label(&self.name).as_deref() == Some("true")
    }

    /// Its live container kept its PID, and the handler is in its config.
    pub fn undisturbed_and_provisioned(&self) {
        assert_eq!(
            self.host.cd.task_pid("live"),
            Some(self.live),
            "{}'s container was disturbed",
            self.name
        );
        assert!(
            self.host.config().contains("runtimes.kwtest]"),
            "{} not provisioned",
            self.name
        );
    }
}

/// Until every node in `nodes` reads provisioned (their agents' logs if not within `within`).
pub fn wait_all_ready(api: &KubeApi, nodes: &[&FleetNode], within: Duration) {
    let deadline = Instant::now() + within;
    while !nodes.iter().all(|n| n.ready(api)) {
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| format!("{}:\n{}", n.name, n.agent.log()))
                .collect();
            panic!("the fleet never became ready:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every restart window of the fleet.
pub fn all_windows(nodes: &[FleetNode]) -> Vec<(u128, u128)> {
    nodes
        .iter()
        .flat_map(|n| restart_windows(&n.windows))
        .collect()
}

/// The grantor now: the node holding its Lease.
pub fn grantor(api: &KubeApi) -> Option<String> {
    let out = api.kubectl(&[
        "get",
        "lease",
        "-n",
        NAMESPACE,
        "kwasm-agent-restart-grantor",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
        .filter(|h| out.status.success() && !h.is_empty())
}

/// The restart permits now: (node, state).
pub fn permits(api: &KubeApi) -> Vec<(String, String)> {
    let out = api.kubectl_ok(&[
        "get",
        "leases",
        "-n",
        NAMESPACE,
        "-l",
        "kwasm.sh/restart-permit",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                l["metadata"]["annotations"]["kwasm.sh/permit"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

/// A deadline for the usual waits.
pub fn patience() -> Duration {
    WAIT * 2
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
    paced_finish_with(ready, restart, |_| slots, &[])
}

/// `paced_finish` with a limit that changes over time: `limit(t)` restarts at once from time `t`,
/// changing only at the moments in `changes` (a percentage's count growing as nodes are triggered).
pub fn paced_finish_with(
    ready: &[f64],
    restart: f64,
    limit: impl Fn(f64) -> usize,
    changes: &[f64],
) -> f64 {
    let mut ready = ready.to_vec();
    ready.sort_by(f64::total_cmp);
    let mut ends: Vec<f64> = Vec::new();
    let mut finish = f64::NEG_INFINITY;
    for at in ready {
        let mut t = at;
        loop {
            let running = ends.iter().filter(|e| **e > t).count();
            if running < limit(t).max(1) {
                break;
            }
            // The next moment something frees up or the limit grows.
            let next = (ends.iter().chain(changes))
                .copied()
                .filter(|e| *e > t)
                .fold(f64::INFINITY, f64::min);
            t = next;
        }
        ends.push(t + restart);
        finish = finish.max(t + restart);
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
    use super::{paced_finish, paced_finish_with};

    /// The fixed-limit schedule as it was written first: the oracle for the general one.
    fn paced_finish_fixed(ready: &[f64], slots: usize, restart: f64) -> f64 {
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

    #[test]
    fn a_growing_limit_serves_more_at_once_from_when_it_grows() {
        // One slot until t=2, then two: the first two nodes one after the other, the last two together.
        let limit = |t: f64| if t < 2.0 { 1 } else { 2 };
        assert_eq!(paced_finish_with(&[0.0; 4], 1.0, limit, &[2.0]), 3.0);
        for (ready, slots) in [
            (vec![0.0; 9], 2),
            (vec![0.0, 0.0, 4.0], 3),
            (vec![0.5, 0.0], 1),
        ] {
            assert_eq!(
                paced_finish(&ready, slots, 1.0),
                paced_finish_fixed(&ready, slots, 1.0)
            );
        }
    }

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
