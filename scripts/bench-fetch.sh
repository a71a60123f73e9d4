#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Fetch benchmark: serve a ~200 MiB shim archive on loopback and compare, in one run, the agent's
# fetch + verify + unpack + install against `curl -s URL | sha256sum`. Prints the throughput ratio
# (agent / curl); the goal is >= 0.95.
#   scripts/bench-fetch.sh [SIZE_MIB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/measure.sh
. "$(dirname "$0")/lib/measure.sh"
size_mib=${1:-200}
runs=${2:-5}

cargo build --release --quiet -p kwasm-agent
agent="$PWD/target/release/kwasm-agent"

work=$(mktemp -d /tmp/kw.bench.XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> building a ${size_mib} MiB archive"
# Incompressible contents: the archive is as big as the binary, the worst case for the pipeline.
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$work/containerd-shim-bench-v2"
tar -C "$work" -cf - containerd-shim-bench-v2 | gzip -1 > "$work/shim.tar.gz"
rm "$work/containerd-shim-bench-v2"
sha=$(sha256sum "$work/shim.tar.gz" | cut -d' ' -f1)
bytes=$(stat -c %s "$work/shim.tar.gz")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
server_pid=$!
url="http://127.0.0.1:$port/shim.tar.gz"
for _ in $(seq 100); do curl -sf -o /dev/null -r 0-0 "$url" && break; done

# apply also wires the shim into containerd's config: give the sandbox host a minimal one and no
# restart, so the run measures the artifact pipeline.
cat > "$work/settings.toml" <<TOML
[host]
install_dir = "/opt/kwasm"
[artifacts]
allow_http = true
[containerd]
restart = "none"
[[shims]]
name = "bench"
runtime_type = "io.containerd.bench.v2"
binary = "containerd-shim-bench-v2"
version = "v1"
[[shims.platforms]]
arch = "amd64"
url = "$url"
sha256 = "$sha"
[[shims.platforms]]
arch = "arm64"
url = "$url"
sha256 = "$sha"
TOML


curl_times=() agent_times=()
for _ in $(seq "$runs"); do
  t0=$(now); got=$(curl -s "$url" | sha256sum | cut -d' ' -f1); t1=$(now)
  [ "$got" = "$sha" ] || { echo "curl digest mismatch"; exit 1; }
  curl_times+=("$(calc "$t1 - $t0")")

  rm -rf "$work/root"; mkdir -p "$work/root/etc/containerd"
  printf 'version = 2\n' > "$work/root/etc/containerd/config.toml"
  t0=$(now); KWASM_LOG=warn "$agent" apply --config "$work/settings.toml" --host-root "$work/root" >/dev/null; t1=$(now)
  agent_times+=("$(calc "$t1 - $t0")")
done
rm -rf "$work/root"

c=$(printf '%s\n' "${curl_times[@]}" | median)
a=$(printf '%s\n' "${agent_times[@]}" | median)
mib=$(calc "$bytes / 1048576")
printf 'archive: %.1f MiB, %s runs each, medians\n' "$mib" "$runs"
printf 'curl -s | sha256sum          : %.3f s  (%.0f MiB/s)\n' "$c" "$(calc "$mib / $c")"
printf 'kwasm-agent fetch+verify+install: %.3f s  (%.0f MiB/s)\n' "$a" "$(calc "$mib / $a")"
printf 'throughput ratio agent/curl: %.2f (goal >= 0.95)\n' "$(calc "$c / $a")"
