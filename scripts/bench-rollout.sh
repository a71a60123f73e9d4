#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The fleet at AKS's size limit (issue 27): `bench-rollout` with NODES Nodes in the tests' API server
# (tests/kube-apiserver on its own etcd), AGENTS of them real agents (the rest simulated kubelets),
# restarts of 1 s, once with pacing 2 and once with "10%", each measured the same way: idle, a
# rollout, an in-place Shim upgrade; then "10%" again with a fifth of the agents, where this
# machine's 2 cores are less the limit (the API server, etcd, the kubelets' heartbeats and every
# agent's own pre-restart work share them). Each run's goals are judged against its own baseline: the
# ideal rollout ceil(agents / slots) × the mean restart its scripts measured, and the ideal given when
# each node became ready to restart. Writes docs/fleet-benchmark.md and, with matplotlib in a venv
# under target/, a picture of each run's timeline (docs/images/fleet-<run>.png).
#   scripts/bench-rollout.sh [AGENTS] [NODES]     (default 200 5000; four runs, ~10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-200}
nodes=${2:-5000}
cargo build --release --quiet -p kwasm-agent -p kwasm-tests --bin bench-rollout --bin kwasm-agent
timelines=$(mktemp -d /tmp/kw.XXXXXX)
trap 'rm -rf "$timelines"' EXIT
# run NAME PACING AGENTS [MORE ARGS]
run() {
  local name=$1 pacing=$2 n=$3
  shift 3
  echo "==> bench-rollout --agents $n --nodes $nodes --pacing $pacing $*" >&2
  KWASM_BENCH_TIMELINE=$timelines KWASM_BENCH_RUN=$name \
    target/release/bench-rollout --agents "$n" --nodes "$nodes" --pacing "$pacing" --restart 1 --idle 30 "$@"
}
few=$((agents / 5))
a=$(run pacing-2 2 "$agents")
b=$(run pacing-10pc 10% "$agents")
c=$(run pacing-10pc-few 10% "$few")
# The first run again without the other nodes' heartbeats: what the pacing costs when this machine's
# cores are not shared with a fleet's worth of kubelet writes.
d=$(run pacing-2-quiet 2 "$agents" --kubelets none)
# Every figure each run printed, beside the summary below.
mkdir -p target/bench-rollout
printf '%s\n' "$a" > target/bench-rollout/pacing-2.txt
printf '%s\n' "$b" > target/bench-rollout/pacing-10pc.txt
printf '%s\n' "$c" > target/bench-rollout/pacing-10pc-few.txt
printf '%s\n' "$d" > target/bench-rollout/pacing-2-quiet.txt
# shellcheck source=lib/venv.sh
. "$(dirname "$0")/lib/venv.sh"
pictures=""
if ensure_plot_venv && "$plot_python" scripts/plot-rollout.py "$timelines" docs/images \
  "pacing-2=pacing 2, $agents agents" "pacing-10pc=pacing 10%, $agents agents" \
  "pacing-10pc-few=pacing 10%, $few agents" "pacing-2-quiet=pacing 2, $agents agents, no kubelets" >&2; then
  pictures=1
else
  echo "no pictures: matplotlib could not be had (the figures are written all the same)" >&2
fi
v() { awk -v k="$2" '$1 == k && NF == 2 {print $2}' <<<"$1"; }
# The lines starting with KEY of the three runs, as a list labelled by run.
each() {
  { grep "^$1 " <<<"$a" || true; } | sed -e "s/^$1 /- 2: /"
  { grep "^$1 " <<<"$b" || true; } | sed -e "s/^$1 /- 10%: /"
  { grep "^$1 " <<<"$c" || true; } | sed -e "s/^$1 /- 10% of $few: /"
  { grep "^$1 " <<<"$d" || true; } | sed -e "s/^$1 /- 2, no kubelets: /"
}
out=docs/fleet-benchmark.md
{
  echo "# A 5,000-node fleet: what restart pacing and the catalog cost"
  echo
  echo "Written by \`scripts/bench-rollout.sh $agents $nodes\` on $(date -u +%Y-%m-%dT%H:%M:%SZ); $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)."
  echo "$nodes Nodes in the tests' API server (tests/kube-apiserver: Kubernetes' own server libraries on Debian's etcd, one process each, sharing this machine's cores with everything else): $agents run by real agent processes (release build), each in a mount namespace of its own with its own containerd config, restarting with a script that takes 1 s and logs when \"containerd\" is down, and proving its handler through CRI against one real containerd that has it loaded; the other $((nodes - agents)) simulated (their kubelets renew node Leases every 10 s and write status every 5 min; silent in the last run). The catalog controller follows the shim as a Shim object (\`status_interval = \"5s\"\`). Requests counted in the server's audit log by User-Agent, response bytes from its own metrics (\`apiserver_response_sizes\`), watch bytes as it sent them to each watch (\`apiserver_watch_events_sizes\`). A node is ready to restart when it first looks at its own restart permit (its own download, verify and install done, its ask written); \`ideal_from_ready\` is when a perfect scheduler with the same slots and mean restart, serving the nodes in the order they became ready, would have finished — the ideal once the machine's own pre-restart work, which no pacing can hurry, is counted."
  echo
  echo "| figure | pacing 2 | pacing 10% | 10%, $few agents | 2, no kubelets |"
  echo "|---|---|---|---|---|"
  for k in rollout_slots rollout_most_down_at_once rollout_mean_restart_s rollout_first_down_to_last_up_s rollout_ideal_s rollout_converge_ratio \
    rollout_ready_to_restart_over_s rollout_first_ready_to_last_up_s rollout_ideal_from_ready_s rollout_converge_ratio_from_ready \
    rollout_lease_requests_per_node rollout_requests_per_s rollout_overhead_requests_per_s rollout_response_bytes_per_s \
    idle_requests_per_s idle_requests_per_s_per_agent idle_requests_per_s_fixed idle_open_watches rollout_open_watches \
    idle_apiserver_cpu_share rollout_apiserver_cpu_share rollout_etcd_cpu_share rollout_machine_cpu_busy rollout_apiserver_rss_mib rollout_etcd_rss_mib \
    rollout_shim_status_writes rollout_shim_watch_bytes_per_status_write_per_agent upgrade_s upgrade_requests_per_s upgrade_restarts \
    idle_start_agent_rss_kib_mean idle_start_agent_rss_kib_max idle_start_agent_rss_largest grantor_at_idle_start idle_start_agent_rss_kib_second_largest after_rollout_agent_rss_kib_max after_upgrade_agent_cpu_s_mean \
    idle_start_catalog_rss_kib after_upgrade_catalog_peak_rss_kib after_upgrade_catalog_cpu_s; do
    echo "| $k | $(v "$a" "$k") | $(v "$b" "$k") | $(v "$c" "$k") | $(v "$d" "$k") |"
  done
  echo
  echo "Goals (pacing 2, then 10%, then 10% of $few agents, then pacing 2 without the kubelets' heartbeats):"
  echo
  each goal
  echo
  echo "Lease requests of the agents during each rollout, by kind and answer (409, 404: a race lost):"
  echo
  each rollout_lease_requests_by_answer
  echo
  echo "Where a restart's turn went (seconds; median, then 90th percentile over the nodes): ready to granted, up to given back, given back to the next grant, granted to confirmed, confirmed to down:"
  echo
  each rollout_turn_median_s
  each rollout_turn_p90_s
  echo
  echo "The simulated kubelets' heartbeats that landed, against what $((nodes - agents)) kubelets write (a server that cannot keep up has its figures taken under less load):"
  echo
  each kubelet_writes_per_s
  echo
  echo "CPU during each rollout, machine (share of all cores) / API server / etcd (of one core): 2: $(v "$a" rollout_machine_cpu_busy) / $(v "$a" rollout_apiserver_cpu_share) / $(v "$a" rollout_etcd_cpu_share); 10%: $(v "$b" rollout_machine_cpu_busy) / $(v "$b" rollout_apiserver_cpu_share) / $(v "$b" rollout_etcd_cpu_share); 10% of $few: $(v "$c" rollout_machine_cpu_busy) / $(v "$c" rollout_apiserver_cpu_share) / $(v "$c" rollout_etcd_cpu_share); 2, no kubelets: $(v "$d" rollout_machine_cpu_busy) / $(v "$d" rollout_apiserver_cpu_share) / $(v "$d" rollout_etcd_cpu_share)."
  if [ -n "$pictures" ]; then
    echo
    echo "Each run over time — containerds down against the limit, nodes waiting for a permit, nodes ready — for the rollout and the in-place upgrade:"
    echo
    echo "![pacing 2](images/fleet-pacing-2.png)"
    echo "![pacing 10%](images/fleet-pacing-10pc.png)"
    echo "![pacing 10%, $few agents](images/fleet-pacing-10pc-few.png)"
    echo "![pacing 2, no kubelets](images/fleet-pacing-2-quiet.png)"
  fi
  echo
  echo "Requests during the rollout with pacing 2, by component and kind (count, per agent node, per second, response bytes per second):"
  echo
  grep '^rollout_requests ' <<<"$a" | sed -e 's/^rollout_requests /- /'
  echo
  echo "Bytes the server sent to watches during the rollout with pacing 2, per second, by resource:"
  echo
  grep '^rollout_watch_bytes_per_s ' <<<"$a" | sed -e 's/^rollout_watch_bytes_per_s /- /'
} > "$out"
cat "$out"
