#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The fleet at AKS's size limit (issue 27): `bench-rollout` with NODES Nodes in the API stand-in, AGENTS
# of them real agents (the rest simulated kubelets), restarts of 1 s, once with pacing 2 and once with
# "10%", each measured the same way: idle, a rollout, an in-place Shim upgrade; then "10%" again with a
# fifth of the agents, where this machine's 2 cores are not the limit (500 agents' own pre-restart work
# saturates them at 10%). Each run's goals are judged against its own baseline: the ideal rollout
# ceil(agents / slots) × the mean restart its scripts measured, and the ideal given when each node
# became ready to restart. Writes docs/fleet-benchmark.md.
#   scripts/bench-rollout.sh [AGENTS] [NODES]     (default 500 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-500}
nodes=${2:-5000}
cargo build --release --quiet -p kwasm-agent -p kwasm-tests --bin bench-rollout --bin kwasm-agent
run() {
  echo "==> bench-rollout --agents $2 --nodes $nodes --pacing $1" >&2
  target/release/bench-rollout --agents "$2" --nodes "$nodes" --pacing "$1" --restart 1 --idle 30
}
few=$((agents / 5))
a=$(run 2 "$agents")
b=$(run 10% "$agents")
c=$(run 10% "$few")
v() { awk -v k="$2" '$1 == k && NF == 2 {print $2}' <<<"$1"; }
# The lines starting with KEY of the three runs, as a list labelled by run.
each() {
  { grep "^$1 " <<<"$a" || true; } | sed -e "s/^$1 /- 2: /"
  { grep "^$1 " <<<"$b" || true; } | sed -e "s/^$1 /- 10%: /"
  { grep "^$1 " <<<"$c" || true; } | sed -e "s/^$1 /- 10% of $few: /"
}
out=docs/fleet-benchmark.md
{
  echo "# A 5,000-node fleet: what restart pacing and the catalog cost"
  echo
  echo "Written by \`scripts/bench-rollout.sh $agents $nodes\` on $(date -u +%Y-%m-%dT%H:%M:%SZ); $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)."
  echo "$nodes Nodes in the API stand-in: $agents run by real agent processes (release build), each in a mount namespace of its own with its own containerd config, restarting with a script that takes 1 s and logs when \"containerd\" is down, and proving its handler through CRI against one real containerd that has it loaded; the other $((nodes - agents)) simulated (their kubelets renew node Leases every 10 s and write status every 5 min). The catalog controller follows the shim as a Shim object (\`status_interval = \"5s\"\`). Requests and response bytes counted at the stand-in by User-Agent; watch bytes as streamed. A node is ready to restart when it first lists the restart slots (its own download, verify and install done); \`ideal_from_ready\` is when a perfect scheduler with the same slots and mean restart, serving the nodes in the order they became ready, would have finished — the ideal once the machine's own pre-restart work, which no pacing can hurry, is counted."
  echo
  echo "| figure | pacing 2 | pacing 10% | 10%, $few agents |"
  echo "|---|---|---|---|"
  for k in rollout_slots rollout_most_down_at_once rollout_mean_restart_s rollout_first_down_to_last_up_s rollout_ideal_s rollout_converge_ratio \
    rollout_ready_to_restart_over_s rollout_first_ready_to_last_up_s rollout_ideal_from_ready_s rollout_converge_ratio_from_ready \
    rollout_lease_requests_per_node rollout_requests_per_s rollout_overhead_requests_per_s rollout_response_bytes_per_s \
    idle_requests_per_s idle_open_watches rollout_open_watches \
    rollout_shim_status_writes rollout_shim_watch_bytes_per_status_write_per_agent upgrade_s upgrade_requests_per_s upgrade_restarts \
    idle_start_agent_rss_kib_mean idle_start_agent_rss_kib_max after_rollout_agent_rss_kib_max after_upgrade_agent_cpu_s_mean \
    idle_start_catalog_rss_kib after_upgrade_catalog_peak_rss_kib after_upgrade_catalog_cpu_s; do
    echo "| $k | $(v "$a" "$k") | $(v "$b" "$k") | $(v "$c" "$k") |"
  done
  echo
  echo "Goals (pacing 2, then 10%, then 10% of $few agents):"
  echo
  each goal
  echo
  echo "Lease requests of the agents during each rollout, by kind and answer (409, 404: a race lost):"
  echo
  each rollout_lease_requests_by_answer
  echo
  echo "Machine and stand-in CPU (share of all cores; stand-in: of one core) during each rollout: 2: $(v "$a" rollout_machine_cpu_busy) / $(v "$a" rollout_stand_in_cpu_share); 10%: $(v "$b" rollout_machine_cpu_busy) / $(v "$b" rollout_stand_in_cpu_share); 10% of $few: $(v "$c" rollout_machine_cpu_busy) / $(v "$c" rollout_stand_in_cpu_share)."
  echo
  echo "Requests during the rollout with pacing 2, by component and kind (count, per agent node, per second, response bytes per second):"
  echo
  grep '^rollout_requests ' <<<"$a" | sed -e 's/^rollout_requests /- /'
  echo
  echo "Bytes streamed to watches during the rollout with pacing 2, per second:"
  echo
  grep '^rollout_watch_bytes_per_s ' <<<"$a" | sed -e 's/^rollout_watch_bytes_per_s /- /'
} > "$out"
cat "$out"
