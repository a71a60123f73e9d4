#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Agent benchmark: time from `kubectl annotate node` to the ready label (warm cache), against a bare
# restart of the same containerd (restart + socket answering) measured in the same run. Prints the
# ratio (goal <= 1.2) and the agent's idle RSS (goal <= 10 MiB).
#   scripts/bench-agent.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/measure.sh
. "$(dirname "$0")/lib/measure.sh"
runs=${1:-5}

cargo build --release --quiet -p kwasm-agent
agent="$PWD/target/release/kwasm-agent"

D=$(mktemp -d /tmp/kw.bench.XXXXXX)
# shellcheck source=lib/sandbox.sh
. "$(dirname "$0")/lib/sandbox.sh"
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [ -f "$D/containerd.pid" ] && kill "$(cat "$D/containerd.pid")" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$D"
}
trap cleanup EXIT

sandbox_containerd
sandbox_shim_release
port=$(free_port)
(cd "$D/www" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
pids+=($!)

python3 tests/kube-api/fake_kube_api.py > "$D/api.out" 2>&1 &
pids+=($!)
for _ in $(seq 200); do grep -q PORT "$D/api.out" 2>/dev/null && break; sleep 0.02; done
api_port=$(awk '/PORT/ {print $2}' "$D/api.out")
api="http://127.0.0.1:$api_port"
cat > "$D/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: bench, cluster: {server: "$api"}}]
users: [{name: bench, user: {token: bench}}]
contexts: [{name: bench, context: {cluster: bench, user: bench}}]
current-context: bench
EOF
curl -sf -XPOST "$api/_test/nodes" -d '{"name":"n1","arch":"amd64"}' >/dev/null
export KUBECONFIG="$D/kubeconfig"

metrics_port=$(free_port)
sandbox_settings "$port" <<EOF
[agent]
listen = "127.0.0.1:$metrics_port"
EOF
NODE_NAME=n1 KWASM_LOG=${BENCH_LOG:-warn} "$agent" run --config "$D/settings.toml" 2>"$D/agent.log" &
agent_pid=$!
pids+=("$agent_pid")
for _ in $(seq 500); do curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null && break; sleep 0.02; done

# A cheap probe (one curl, a grep), so the measurement adds as little as the baseline's `ctr` probe.
label_is() {
  case "$1" in
    true) curl -sf "$api/api/v1/nodes/n1" | grep -q '"kwasm.sh/kwasm-provisioned": "true"' ;;
    *) ! curl -sf "$api/api/v1/nodes/n1" | grep -q '"kwasm.sh/kwasm-provisioned"' ;;
  esac
}
wait_label() { for _ in $(seq 3000); do label_is "$1" && return 0; sleep 0.01; done; echo "label never became '$1'"; cat "$D/agent.log"; exit 1; }

# Idle footprint: ready, watching, nothing to do.
sleep 2
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$agent_pid/status")

# Warm the cache once (the first provisioning downloads).
kubectl annotate node n1 kwasm.sh/kwasm-node=true >/dev/null
wait_label true
kubectl annotate node n1 kwasm.sh/kwasm-node- >/dev/null
wait_label ""

agent_times=() restart_times=() kubectl_times=()
for _ in $(seq "$runs"); do
  t0=$(now)
  kubectl annotate node n1 kwasm.sh/kwasm-node=true >/dev/null
  kubectl_times+=("$(calc "$(now) - $t0")")
  wait_label true
  t1=$(now)
  agent_times+=("$(calc "$t1 - $t0")")
  kubectl annotate node n1 kwasm.sh/kwasm-node- >/dev/null
  wait_label ""

  t0=$(now)
  "$D/restart.sh"
  wait_containerd
  t1=$(now)
  restart_times+=("$(calc "$t1 - $t0")")
done

a=$(printf '%s\n' "${agent_times[@]}" | median)
r=$(printf '%s\n' "${restart_times[@]}" | median)
printf 'runs: %s, medians\n' "$runs"
printf 'kubectl annotate -> ready label (warm cache): %.3f s (of which kubectl itself: %.3f s)\n' "$a" "$(printf '%s\n' "${kubectl_times[@]}" | median)"
printf 'bare containerd restart (restart + socket answers): %.3f s\n' "$r"
printf 'ratio agent/restart: %.2f (goal <= 1.2)\n' "$(calc "$a / $r")"
printf 'agent idle RSS: %.1f MiB (goal <= 10)\n' "$(calc "$rss_kib / 1024")"
# BENCH_LOG=info shows the agent's timeline of the last run.
if [ "${BENCH_LOG:-warn}" != warn ]; then tail -n 40 "$D/agent.log"; fi
