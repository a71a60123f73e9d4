#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Every benchmark beside its baseline, measured in the same run the same way, written to
# BENCHMARKS.md (figure, baseline, ratio, goal, machine, command, date) and printed.
#
#   scripts/bench.sh [--runs N] [--fetch-mib M] [--fleet AGENTS] [--quick] [--no-image] [--no-wasm]
#                    [--no-nodes] [--out FILE]
#
# P1  kubectl annotate -> ready label vs a bare restart of the same containerd until its CRI Status
#     answers (both polled by kw-probe every 10 ms, one request per probe)
# P2  fetch+verify+install (kwasm-agent apply) vs `curl -s | sha256sum` and vs `openssl dgst -sha256`
#     of the same file (the hashing floor of this CPU)
# P3  CRI-unavailable window during a reconcile vs during a bare restart (CRI Status every 2 ms)
#     P1 and P3 in the sandbox (containerd restarted by a script) and on systemd nodes with containerd
#     1.6, 1.7 and 2.1 (kw-node; the agent's default settings, `systemctl restart containerd` as the
#     baseline). Every baseline restarts the same containerd with the same final config (the shim's
#     runtime in it), after the same settle time, with the agent running idle beside it.
# P4  no-op reconcile time and restarts (the agent's own metrics over periodic resyncs)
# P5  idle RSS; binary and image size; API requests per idle node per hour (counted in the audit log
#     of the tests' API server, tests/kube-apiserver)
# plus a timeline of one reconcile (the agent's own log line) and, when a wasm shim archive is at
# hand, WebAssembly cold start vs runc (bench-wasm); and the light fleet run (bench-fleet: AGENTS real
# agents with restart = "none" against one API server; --fleet 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/measure.sh
. "$(dirname "$0")/lib/measure.sh"

runs=5 fetch_mib=200 image=1 wasm=1 fleet=200 nodes=1 out=BENCHMARKS.md
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift ;;
    --fetch-mib) fetch_mib=$2; shift ;;
    --fleet) fleet=$2; shift ;;
    --quick) runs=3 fetch_mib=64 image=0 wasm=0 fleet=0 ;;
    --no-image) image=0 ;;
    --no-wasm) wasm=0 ;;
    --no-nodes) nodes=0 ;;
    --out) out=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
command_line="scripts/bench.sh $*"
[ "$command_line" = "scripts/bench.sh " ] && command_line="scripts/bench.sh"

echo "==> release build" >&2
cargo build --release --quiet -p kwasm-agent
cargo build --release --quiet -p kwasm-tests --bin kw-probe --bin kw-serve --bin bench-wasm --bin bench-fleet --bin kw-node --bin kw-cluster
KWASM_KUBE_APISERVER=${KWASM_KUBE_APISERVER:-$(bash scripts/kube-apiserver.sh | tail -n 1)}
export KWASM_KUBE_APISERVER
agent="$PWD/target/release/kwasm-agent"
probe="$PWD/target/release/kw-probe"

D=$(mktemp -d /tmp/kw.bench.XXXXXX)
# shellcheck source=lib/sandbox.sh
. "$(dirname "$0")/lib/sandbox.sh"
pids=()
node_fd=""   # the running kw-node's standard input: closing it tears the node down
cluster_fd=""   # the same for kw-cluster (the API server and its etcd)
cleanup() {
  set +e
  [ -n "$node_fd" ] && exec {node_fd}>&-
  [ -n "$cluster_fd" ] && exec {cluster_fd}>&- && wait "$KWCLUSTER_PID" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [ -f "$D/containerd.pid" ] && kill "$(cat "$D/containerd.pid")" 2>/dev/null
  wait 2>/dev/null
  sandbox_unmount
  rm -rf "$D"
}
trap cleanup EXIT

rows=()   # figure, measured, baseline, ratio, goal, met: tab-separated
row() { rows+=("$1"$'\t'"$2"$'\t'"$3"$'\t'"$4"$'\t'"$5"$'\t'"$6"); printf '%-52s %-22s %-28s %-8s %s %s\n' "$1" "$2" "$3" "$4" "$5" "$6" >&2; }
met() { if awk "BEGIN { exit !($1) }"; then echo yes; else echo NO; fi; }

# ---------------------------------------------------------------------------------------------------
echo "==> P2: fetch + verify + install of a ${fetch_mib} MiB archive" >&2
mkdir -p "$D/fetch/www"
{ printf '#!/bin/sh\nexit 0\n'; head -c "$((fetch_mib * 1024 * 1024))" /dev/urandom; } > "$D/fetch/containerd-shim-bench-v2"
tar -C "$D/fetch" -cf - containerd-shim-bench-v2 | gzip -1 > "$D/fetch/www/shim.tar.gz"
rm "$D/fetch/containerd-shim-bench-v2"
fsha=$(sha256sum "$D/fetch/www/shim.tar.gz" | cut -d' ' -f1)
fbytes=$(stat -c %s "$D/fetch/www/shim.tar.gz")
# Served from memory (kw-serve): the server must not be what is measured.
target/release/kw-serve "$D/fetch/www/shim.tar.gz" > "$D/fetch/port" &
pids+=($!)
for _ in $(seq 300); do grep -q PORT "$D/fetch/port" 2>/dev/null && break; sleep 0.02; done
furl="http://127.0.0.1:$(awk '/PORT/ {print $2}' "$D/fetch/port")/shim.tar.gz"
cat > "$D/fetch/settings.toml" <<TOML
[host]
install_dir = "/opt/kwasm"
[artifacts]
allow_http = true
max_size = "4GiB"
[containerd]
restart = "none"
[[shims]]
name = "bench"
runtime_type = "io.containerd.bench.v2"
binary = "containerd-shim-bench-v2"
version = "v1"
[[shims.platforms]]
arch = "amd64"
url = "$furl"
sha256 = "$fsha"
TOML
# The host root the agent installs into: a containerd config, and /bin/sh for the start probe.
fresh_root() {
  rm -rf "$D/fetch/root"; mkdir -p "$D/fetch/root/etc/containerd" "$D/fetch/root/bin"
  printf 'version = 2\n' > "$D/fetch/root/etc/containerd/config.toml"
  cp /bin/sh "$D/fetch/root/bin/sh"
  for lib in $(ldd /bin/sh | grep -o '/[^ ]*'); do mkdir -p "$D/fetch/root$(dirname "$lib")"; cp "$lib" "$D/fetch/root$lib"; done
}
curl_t=() agent_t=() openssl_t=() dd_t=()
for _ in $(seq "$runs"); do
  t0=$(now); got=$(curl -s "$furl" | sha256sum | cut -d' ' -f1); t1=$(now)
  [ "$got" = "$fsha" ] || { echo "curl digest mismatch" >&2; exit 1; }
  curl_t+=("$(calc "$t1 - $t0")")
  t0=$(now); openssl dgst -sha256 "$D/fetch/www/shim.tar.gz" >/dev/null; t1=$(now)
  openssl_t+=("$(calc "$t1 - $t0")")
  # The install is durable (fsync before the rename): writing the same bytes durably is a floor too.
  t0=$(now); dd if="$D/fetch/www/shim.tar.gz" of="$D/fetch/dd.out" bs=1M conv=fsync status=none; t1=$(now)
  rm -f "$D/fetch/dd.out"
  dd_t+=("$(calc "$t1 - $t0")")
  fresh_root
  t0=$(now); KWASM_LOG=warn "$agent" apply --arch amd64 --config "$D/fetch/settings.toml" --host-root "$D/fetch/root" >/dev/null; t1=$(now)
  agent_t+=("$(calc "$t1 - $t0")")
done
rm -rf "$D/fetch/root"
fc=$(printf '%s\n' "${curl_t[@]}" | median)
fo=$(printf '%s\n' "${openssl_t[@]}" | median)
fa=$(printf '%s\n' "${agent_t[@]}" | median)
fd=$(printf '%s\n' "${dd_t[@]}" | median)
mib=$(calc "$fbytes / 1048576")
r_curl=$(calc "$fc / $fa"); r_ossl=$(calc "$fo / $fa")
row "P2 fetch+verify+install, ${fetch_mib} MiB (throughput)" "$(printf '%.0f MiB/s' "$(calc "$mib / $fa")")" "$(printf 'curl|sha256sum %.0f MiB/s' "$(calc "$mib / $fc")")" "$(printf '%.2f' "$r_curl")" ">= 0.95" "$(met "$r_curl >= 0.95")"
row "P2 same, against the hashing floor" "$(printf '%.0f MiB/s' "$(calc "$mib / $fa")")" "$(printf 'openssl dgst %.0f MiB/s' "$(calc "$mib / $fo")")" "$(printf '%.2f' "$r_ossl")" ">= 0.6" "$(met "$r_ossl >= 0.6")"
row "P2 same, against the durable-write floor" "$(printf '%.0f MiB/s' "$(calc "$mib / $fa")")" "$(printf 'dd conv=fsync %.0f MiB/s' "$(calc "$mib / $fd")")" "$(printf '%.2f' "$(calc "$fd / $fa")")" "-" "-"
kill "${pids[-1]}" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------------
echo "==> sandbox: containerd, the API server, the agent" >&2
sandbox_containerd
sandbox_shim_release
port=$(free_port)
(cd "$D/www" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
pids+=($!)
# The API server (kw-cluster: tests/kube-apiserver on its etcd, the chart's RBAC and admission
# policies), with the sandbox's node and the systemd nodes registered, each agent with its own token.
coproc KWCLUSTER { exec target/release/kw-cluster "$D/cluster" n1 node-1.6 node-1.7 node-2.1; }
cluster_fd=${KWCLUSTER[1]}
declare -A agent_kubeconfig
while read -r what a b <&"${KWCLUSTER[0]}"; do
  case "$what" in
    KUBECONFIG) export KUBECONFIG=$a ;;
    AUDIT) audit=$a ;;
    AGENT) agent_kubeconfig[$a]=$b ;;
  esac
  [ "$what" = AGENT ] && [ "$a" = node-2.1 ] && break
done
# Requests of kwasm-agent (by User-Agent) the audit log shows received at or after $1 (epoch seconds).
agent_requests_since() {
  python3 - "$audit" "$1" <<'PY'
import datetime, json, sys
since, seen = float(sys.argv[2]), set()
for line in open(sys.argv[1]):
    e = json.loads(line)
    t = datetime.datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
    if t >= since and e.get("userAgent", "").startswith("kwasm-agent"):
        seen.add(e["auditID"])
print(len(seen))
PY
}

metrics_port=$(free_port)
start_agent() { # $1 = extra [agent] settings
  sandbox_settings "$port" <<EOF
[agent]
listen = "127.0.0.1:$metrics_port"
$1
EOF
  NODE_NAME=n1 KUBECONFIG=${agent_kubeconfig[n1]} KWASM_LOG=info "$agent" run --config "$D/settings.toml" >>"$D/agent.log" 2>&1 &
  agent_pid=$!
  pids+=("$agent_pid")
  for _ in $(seq 500); do curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null && return 0; sleep 0.02; done
  echo "agent never became ready" >&2; cat "$D/agent.log" >&2; exit 1
}
stop_agent() { kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; }
metric() { curl -sf "http://127.0.0.1:$metrics_port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
label() { "$probe" label n1 kwasm.sh/kwasm-provisioned "$1" 10 >/dev/null; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$agent_pid/status"; }

start_agent ""
sleep 2   # settle: the measurement is of an idle agent, not a synchronisation
rss_fresh=$(rss)

# Warm the cache (the first provisioning downloads), then the measured runs.
kubectl annotate node n1 kwasm.sh/kwasm-node=true >/dev/null; label true
kubectl annotate node n1 kwasm.sh/kwasm-node- >/dev/null; label -

echo "==> P1/P3: annotate -> ready and the CRI-unavailable window, against a bare restart ($runs runs each)" >&2
settle=1   # the same idle time before every measured restart, the agent's and the baseline's
prepare=(true)   # run before each settle: the same state before each measured restart
# measure_p1_p3 NODE SOCKET RESTART...: one annotate -> ready by the agent, then a bare restart of the
# same containerd with the same (now provisioned) config, each after $settle s idle, each watched by
# the same CRI probe; then the trigger goes again. Appends to ready_t, bare_t, win_agent, win_bare.
measure_p1_p3() {
  local node=$1 socket=$2 t0 wp
  shift 2
  "${prepare[@]}"
  sleep "$settle"
  "$probe" cri-window "$socket" "$D/stop.a" 2 > "$D/win.a" & wp=$!
  t0=$(now)
  kubectl annotate node "$node" kwasm.sh/kwasm-node=true >/dev/null
  kubectl_t+=("$(calc "$(now) - $t0")")
  "$probe" label "$node" kwasm.sh/kwasm-provisioned true 10 >/dev/null
  ready_t+=("$(calc "$(now) - $t0")")
  touch "$D/stop.a"; wait "$wp"; win_agent+=("$(cat "$D/win.a")"); rm -f "$D/stop.a"

  "${prepare[@]}"
  sleep "$settle"
  "$probe" cri-window "$socket" "$D/stop.b" 2 > "$D/win.b" & wp=$!
  t0=$(now)
  "$@"
  "$probe" cri "$socket" 10 >/dev/null
  bare_t+=("$(calc "$(now) - $t0")")
  touch "$D/stop.b"; wait "$wp"; win_bare+=("$(cat "$D/win.b")"); rm -f "$D/stop.b"

  kubectl annotate node "$node" kwasm.sh/kwasm-node- >/dev/null
  "$probe" label "$node" kwasm.sh/kwasm-provisioned - 10 >/dev/null
}
p1_p3_rows() { # $1 = where, $2 = the baseline's restart
  local p1a p1b p3a p3b r1 r3
  p1a=$(printf '%s\n' "${ready_t[@]}" | median); p1b=$(printf '%s\n' "${bare_t[@]}" | median)
  p3a=$(printf '%s\n' "${win_agent[@]}" | median); p3b=$(printf '%s\n' "${win_bare[@]}" | median)
  kt=$(printf '%s\n' "${kubectl_t[@]}" | median)
  r1=$(calc "$p1a / $p1b"); r3=$(calc "$p3a / $p3b")
  row "P1 kubectl annotate -> ready label, $1" "$(printf '%.3f s' "$p1a")" "$(printf '%s+CRI %.3f s' "$2" "$p1b")" "$(printf '%.2f' "$r1")" "<= 1.1" "$(met "$r1 <= 1.1")"
  row "P3 CRI-unavailable window, $1" "$(printf '%.3f s' "$p3a")" "$(printf '%s %.3f s' "$2" "$p3b")" "$(printf '%.2f' "$r3")" "<= 1.05" "$(met "$r3 <= 1.05")"
}
ready_t=() bare_t=() win_agent=() win_bare=() kubectl_t=()
for _ in $(seq "$runs"); do
  measure_p1_p3 n1 "$sock" "$D/restart.sh"
  grep "reconcile timeline" "$D/agent.log" | tail -n 1 > "$D/timeline"
done
p1_p3_rows "sandbox (script restart)" "bare restart"
rss_after=$(rss)
stop_agent

# ---------------------------------------------------------------------------------------------------
# On systemd nodes: the agent (`run`, default settings: restart = "systemd", everything auto) inside
# the node as its host sees itself, against `systemctl restart containerd` on the same node.
node_p1_p3() { # $1 = containerd series
  local series=$1 npid ndir nport node="node-$1"
  coproc KWNODE { exec target/release/kw-node "$series"; }
  node_fd=${KWNODE[1]}
  read -r _ npid _ ndir <&"${KWNODE[0]}"
  local in=(nsenter -t "$npid" -m -p -u -i -C -r -w --)
  # systemd's start rate limit (5 starts in 10 s) would stop the baseline's restarts (the agent resets
  # it when hit): both sides start from a reset limit.
  prepare=("${in[@]}" systemctl reset-failed containerd)
  nport=$(free_port)
  cat > "$ndir/settings.toml" <<EOF
[host]
root = "/"

[agent]
listen = "127.0.0.1:$nport"

[artifacts]
allow_http = true

$(sandbox_shim_toml "$port")
EOF
  "${in[@]}" env NODE_NAME="$node" KUBECONFIG="${agent_kubeconfig[$node]}" KWASM_LOG=info "$agent" run --config "$ndir/settings.toml" >>"$D/node-$series.log" 2>&1 &
  for _ in $(seq 500); do curl -sf "http://127.0.0.1:$nport/readyz" >/dev/null && break; sleep 0.02; done
  # Warm the cache, then the measured runs.
  kubectl annotate node "$node" kwasm.sh/kwasm-node=true >/dev/null
  "$probe" label "$node" kwasm.sh/kwasm-provisioned true 10 >/dev/null
  kubectl annotate node "$node" kwasm.sh/kwasm-node- >/dev/null
  "$probe" label "$node" kwasm.sh/kwasm-provisioned - 10 >/dev/null
  ready_t=() bare_t=() win_agent=() win_bare=() kubectl_t=()
  for _ in $(seq "$runs"); do
    measure_p1_p3 "$node" "/proc/$npid/root/run/containerd/containerd.sock" "${in[@]}" systemctl restart containerd
  done
  p1_p3_rows "systemd node, containerd $("${in[@]}" containerd --version | awk '{print $3}')" "systemctl restart"
  grep "reconcile timeline" "$D/node-$series.log" | tail -n 1 > "$D/timeline-$series"
  # Closing its input tears the node down, the agent in it included.
  local pid=$KWNODE_PID
  exec {node_fd}>&-
  node_fd="" prepare=(true)
  wait "$pid" 2>/dev/null || true
}
if [ "$nodes" = 1 ]; then
  echo "==> P1/P3 on systemd nodes (containerd 1.6, 1.7, 2.1; $runs runs each)" >&2
  KWASM_CONTAINERD_RELEASES=$(bash scripts/containerd-releases.sh 2>/dev/null | tail -n 1)
  export KWASM_CONTAINERD_RELEASES
  for series in 1.6 1.7 2.1; do node_p1_p3 "$series"; done
fi

# ---------------------------------------------------------------------------------------------------
echo "==> P4/P5: an idle provisioned node — no-op resyncs, API requests, RSS" >&2
start_agent 'resync = "2s"'
kubectl annotate node n1 kwasm.sh/kwasm-node=true >/dev/null; label true
sleep 3
restarts0=$(metric kwasm_containerd_restarts_total)
n0=$(metric kwasm_reconcile_duration_seconds_count); d0=$(metric kwasm_reconcile_duration_seconds_sum)
window=30
since=$(now)
sleep "$window"
reqs=$(agent_requests_since "$since")
n1=$(metric kwasm_reconcile_duration_seconds_count); d1=$(metric kwasm_reconcile_duration_seconds_sum)
restarts1=$(metric kwasm_containerd_restarts_total)
rss_idle=$(rss)
noop_ms=$(calc "($d1 - $d0) / ($n1 - $n0) * 1000")
# Per hour: what the window shows, scaled, and the Node watch, which the agent renews every hour.
per_hour=$(calc "$reqs * 3600 / $window + 1")
row "P4 no-op reconcile (mean of $((n1 - n0)) resyncs)" "$(printf '%.2f ms' "$noop_ms")" "-" "-" "< 5 ms" "$(met "$noop_ms < 5")"
row "P4 containerd restarts during those resyncs" "$((restarts1 - restarts0))" "-" "-" "0" "$(met "$restarts1 == $restarts0")"
row "P5 API requests per idle node per hour" "$(printf '%.1f' "$per_hour")" "$reqs in ${window}s + the hourly watch" "-" "<= 2" "$(met "$per_hour <= 2")"
worst_rss=$rss_fresh
for r in $rss_after $rss_idle; do [ "$r" -gt "$worst_rss" ] && worst_rss=$r; done
row "P5 idle RSS (worst of fresh / after runs / idle)" "$(printf '%.1f MiB' "$(calc "$worst_rss / 1024")")" "$(printf 'fresh %.1f, after %.1f, idle %.1f' "$(calc "$rss_fresh/1024")" "$(calc "$rss_after/1024")" "$(calc "$rss_idle/1024")")" "-" "<= 10 MiB" "$(met "$worst_rss <= 10240")"
stop_agent
kubectl annotate node n1 kwasm.sh/kwasm-node- >/dev/null

bin_size=$(stat -c %s "$agent")
row "P5 agent binary (release, this target)" "$(printf '%.1f MiB' "$(calc "$bin_size / 1048576")")" "-" "-" "-" "-"
if [ "$image" = 1 ]; then
  echo "==> image" >&2
  archive=$(scripts/build-image.sh 2>/dev/null | tail -n 1)
  for arch in amd64 arm64; do
    layer=$(awk -v a="$arch:" '$1 == a {print $6}' target/image/size.txt)
    row "P5 image $arch (static binary + CA bundle, compressed)" "$(printf '%.1f MB' "$(calc "$layer / 1000000")")" "$(basename "$archive")" "-" "-" "-"
  done
fi

wasm_lines=""
if [ "$wasm" = 1 ]; then
  echo "==> WebAssembly cold start (building the test shim if not cached)" >&2
  shim_archive=${KWASM_WASM_SHIM_ARCHIVE:-$(scripts/build-wasm-shim.sh 2>/dev/null | tail -n 1)}
  wasm_lines=$(target/release/bench-wasm "$shim_archive" 3 2>/dev/null)
  w=$(awk '$1 == "wasm_cold_start_s" {print $2}' <<<"$wasm_lines")
  r=$(awk '$1 == "runc_cold_start_s" {print $2}' <<<"$wasm_lines")
  a=$(awk '$1 == "apply_to_first_output_s" {print $2}' <<<"$wasm_lines")
  row "wasm pod cold start to first output" "$w s" "runc pod $r s" "$(printf '%.2f' "$(calc "$w / $r")")" "-" "-"
  row "kwasm-agent apply -> first wasm output (fresh node)" "$a s" "-" "-" "-" "-"
fi

fleet_lines=""
if [ "$fleet" -gt 0 ]; then
  echo "==> light fleet run: $fleet agents against one API server" >&2
  fleet_lines=$(target/release/bench-fleet "$fleet")
  fv() { awk -v k="$1" '$1 == k {print $2}' <<<"$fleet_lines"; }
  row "fleet: API requests per node to provision ($fleet agents)" "$(fv provision_requests_per_node)" "-" "-" "-" "-"
  row "fleet: API requests per idle node per hour" "$(fv idle_requests_per_node_per_hour)" "its $(fv watches_per_agent) watches, hourly" "-" "<= watches" "$(met "$(fv idle_requests_per_node_per_hour) <= $(fv watches_per_agent) + 0.1")"
  row "fleet: watches open per agent" "$(fv watches_per_agent)" "$fleet agents" "-" "2 (its Node, the grantor's Lease) + the grantor's own 2" "$(met "$(fv watches_per_agent) <= 2 + 2 / $fleet + 0.005")"
  row "fleet: the grantor's Lease renewals, whole fleet, per hour" "$(fv idle_grantor_lease_requests_per_hour)" "one agent, every third of leaseDuration" "-" "-" "-"
fi

# ---------------------------------------------------------------------------------------------------
timeline=$(sed -e 's/.*steps=//' "$D/timeline")
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
{
  echo "# Benchmarks"
  echo
  echo "Written by \`$command_line\` on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
  echo "Machine: $(nproc) cores ($cpu), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); containerd $(containerd --version | awk '{print $3}'); medians of $runs runs."
  echo
  echo "| figure | measured | baseline (same run, same probe) | ratio | goal | met |"
  echo "|---|---|---|---|---|---|"
  for r in "${rows[@]}"; do r=${r//|/\\|}; echo "| ${r//$'\t'/ | } |"; done
  echo
  echo "How each is measured:"
  echo "- **P1**: from before \`kubectl annotate node n1 kwasm.sh/kwasm-node=true\` (of which kubectl itself: $(printf '%.3f' "$kt") s) until \`kw-probe label\` (one GET of the Node every 10 ms) sees \`kwasm.sh/kwasm-provisioned=true\`, which the agent sets only once containerd's CRI plugin lists the handler. Baseline: the same containerd restarted by the same restart script, until \`kw-probe cri\` (one CRI \`Status\` every 10 ms) answers RuntimeReady. On the systemd nodes (\`kw-node\`: systemd 252 as PID 1, containerd as its distribution's unit on its default config) the agent runs inside the node with the default settings (restart \`systemd\`, everything \`auto\`) and the baseline is \`systemctl restart containerd\` on the same node. Each measured restart, the agent's and the baseline's, comes after the same ${settle} s idle with the agent running beside it, with the same final config (the shim's runtime in it), and on the nodes with systemd's start limit reset. Warm cache (the archive was downloaded once before)."
  echo "- **P2**: \`kwasm-agent apply\` (process start, download over loopback, SHA-256 on the stream, unpack, start probe, atomic install, config write) against \`curl -s URL | sha256sum\` and \`openssl dgst -sha256\` of the file on disk, ${fetch_mib} MiB of incompressible data; and against \`dd conv=fsync\` of the same bytes (the agent fsyncs the binary before renaming it into place, so the disk's write speed bounds it as well)."
  echo "- **P3**: \`kw-probe cri-window\` calls CRI \`Status\` every 2 ms throughout and reports the longest stretch from a failed call to the next answer; the same probe for the agent's reconcile and for the bare restart."
  echo "- **P4**: the agent's own \`kwasm_reconcile_duration_seconds\` histogram (its sum over its count) over periodic resyncs (\`resync = 2s\`) of a provisioned node with nothing to do; restarts from \`kwasm_containerd_restarts_total\`."
  echo "- **P5**: every request the API server's audit log shows from the idle provisioned agent in ${window} s, scaled to an hour, plus its Node watch, which it renews every hour (it asks for 1-hour watches). RSS from \`/proc/PID/status\`."
  echo
  echo "Timeline of the last measured reconcile (the agent's \`reconcile timeline\` log line):"
  echo
  echo "    $timeline"
  for t in "$D"/timeline-*; do
    [ -s "$t" ] || continue
    echo
    echo "On the systemd node with containerd ${t##*timeline-}:"
    echo
    echo "    $(sed -e 's/.*steps=//' "$t")"
  done
  if [ -n "$wasm_lines" ]; then
    echo
    echo "bench-wasm: $(tr '\n' ' ' <<<"$wasm_lines")"
  fi
  if [ -n "$fleet_lines" ]; then
    echo
    echo "## Light fleet run"
    echo
    echo "\`bench-fleet $fleet\`: $fleet real agents (\`restart = \"none\"\`, each its own host root, \`[fleet] max_concurrent_restarts = \"10%\"\`) against the tests' API server; \`kubectl annotate node --all\` triggers them all; requests counted in its audit log by user agent (kubectl's own are left out)."
    echo
    echo "| measure | value |"
    echo "|---|---|"
    while read -r k v rest; do
      [ -n "$rest" ] && { k="$k $v"; v=$rest; }
      echo "| $k | $v |"
    done <<<"$fleet_lines"
    echo
    echo "At 5,000 nodes: each node makes $(fv provision_requests_per_node) requests to be provisioned ($(fv extrapolated_5000_provision_requests) in all), at the rate the nodes are triggered — \`kubectl annotate --all\` patched $fleet nodes in $(fv annotate_s) s here, and the agents' requests spread over $(fv provision_span_s) s, peaking at $(fv provision_peak_requests_per_s)/s; so about $(fv provision_requests_per_node) times the trigger's own rate of node updates (a 5,000-node \`annotate --all\` at kubectl's pace here: $(awk -v n="$fleet" -v a="$(fv annotate_s)" -v r="$(fv provision_requests_per_node)" 'BEGIN { printf "%.0f", r * n / a }') requests/s). Once provisioned, an idle node's only requests are its watches' renewals, once an hour each: $(fv extrapolated_5000_idle_requests_per_hour) requests an hour for the whole fleet. Nodes waiting for a restart permit make none."
  fi
} > "$out"
echo "==> wrote $out" >&2
cat "$out"
