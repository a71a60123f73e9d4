#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# kwasm-agent in two minutes, on this machine, touching nothing outside one temp directory:
# a real containerd with a running container, a shim served over loopback HTTP, then
# plan -> apply -> workloads through the new runtime -> status -> remove,
# and proof that the first container kept its PID and the config came back byte for byte.
#
#   scripts/demo.sh          the test shim (containerd's runc shim renamed); about a minute
#   scripts/demo.sh --wasm   a real WebAssembly shim (wasmtime on runwasi's crates, built here: the
#                            first build takes about ten minutes) and WASI modules run through CRI,
#                            the way the kubelet starts pods
set -euo pipefail
cd "$(dirname "$0")/.."

wasm=false
case "${1:-}" in
  --wasm) wasm=true ;;
  "") ;;
  *) echo "usage: scripts/demo.sh [--wasm]" >&2; exit 2 ;;
esac

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }

need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v protoc >/dev/null || need+=(protobuf-compiler)
if $wasm; then
  command -v wat2wasm >/dev/null || need+=(wabt)
  command -v cc >/dev/null || need+=(gcc)
  [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || need+=(libc6-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  bold "Installing ${need[*]} (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

bold "Building kwasm-agent"
cargo build --quiet -p kwasm-agent
agent="$PWD/target/debug/kwasm-agent"
if $wasm; then
  bold "Building the WebAssembly shim (runwasi's containerd-shim-wasm + wasmtime; the first build takes about ten minutes)"
  wasm_archive=$(bash scripts/build-wasm-shim.sh | tail -n 1)
  say "$wasm_archive"
  cargo build --quiet -p kwasm-tests --bin kw-cri
  kwcri="$PWD/target/debug/kw-cri"
fi

D=$(mktemp -d /tmp/kw.demo.XXXXXX)
sock="$D/c.sock"
# shellcheck source=lib/sandbox.sh
. "$(dirname "$0")/lib/sandbox.sh"
server_pid=""
cleanup() {
  set +e
  for id in web through-demo; do
    ctr --address "$sock" task kill -s SIGKILL "$id-$$" >/dev/null 2>&1
  done
  for id in web through-demo; do
    for _ in $(seq 200); do ctr --address "$sock" task ls 2>/dev/null | grep -q "^$id-$$ .*RUNNING" || break; sleep 0.02; done
    ctr --address "$sock" task delete -f "$id-$$" >/dev/null 2>&1
    ctr --address "$sock" container delete "$id-$$" >/dev/null 2>&1
  done
  [ -f "$D/containerd.pid" ] && kill "$(cat "$D/containerd.pid")" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  wait 2>/dev/null
  sandbox_unmount
  rm -rf "$D"
  echo
  echo "Cleaned up: every process this demo started is stopped and $D is gone."
}
trap cleanup EXIT

bold "A node: containerd $(containerd --version | awk '{print $3}') in $D, config from 'containerd config default'"
sandbox_containerd
say "containerd pid $(cat "$D/containerd.pid"), socket $sock"
sandbox_rootfs
ctr --address "$sock" run -d --rootfs --runc-root "$D/runc" "$D/rootfs" "web-$$" /bin/sleep 100000 >/dev/null
web_pid() { ctr --address "$sock" task ls | awk -v id="web-$$" '$1 == id && $3 == "RUNNING" { print $2 }'; }
first_pid=$(web_pid)
say "a workload is running: container web-$$, pid $first_pid"

if $wasm; then
  bold "A WebAssembly shim release on a loopback server, and workload images for CRI"
  sandbox_serve_shim wasmtime io.containerd.wasmtime.v1 containerd-shim-wasmtime-v1 "$wasm_archive"
  "$kwcri" images "$sock" "$D/images" | sed 's/^/   image /'
else
  bold "A shim release on a loopback server (containerd's runc shim renamed: a shim that really runs)"
  sandbox_shim_release
fi
port=$(free_port)
(cd "$D/www" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
server_pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
say "http://127.0.0.1:$port/$shim_file  sha256 $shim_sha"

sandbox_settings "$port" </dev/null
export KWASM_LOG=warn

bold "kwasm-agent plan   (changes nothing)"
"$agent" plan --config "$D/settings.toml"

bold "kwasm-agent apply"
old_cd=$(cat "$D/containerd.pid")
"$agent" apply --config "$D/settings.toml"
say "containerd restarted: pid $old_cd -> $(cat "$D/containerd.pid")"
say "container web-$$ pid: $first_pid -> $(web_pid)"

bold "kwasm-agent status"
"$agent" status --config "$D/settings.toml"

shim="$D/opt/kwasm/bin/$shim_bin"
if $wasm; then
  bold "A WASI module in a pod on handler 'wasmtime', through CRI as the kubelet starts it"
  say "kw-cri run $sock wasmtime registry.kwasm.test/hello-wasm:1 from-the-demo --env GREETING=hello"
  "$kwcri" run "$sock" wasmtime registry.kwasm.test/hello-wasm:1 from-the-demo --env GREETING=hello | sed 's/^/   | /'
  bold "A module that fails: its exit code is the pod's"
  set +e
  "$kwcri" run "$sock" wasmtime registry.kwasm.test/exit42-wasm:1 | sed 's/^/   | /'
  code=${PIPESTATUS[0]}
  set -e
  say "exit code $code"
  bold "The same shim by runtime name: ctr run --runtime io.containerd.wasmtime.v1"
  mkdir -p "$D/wasm-rootfs"
  wat2wasm tests/workloads/hello.wat -o "$D/wasm-rootfs/hello.wasm"
  ctr --address "$sock" run --rm --rootfs --runtime io.containerd.wasmtime.v1 "$D/wasm-rootfs" "by-name-$$" /hello.wasm | sed 's/^/   | /'
fi

bold "A container that stays, started on the shim's binary"
ctr --address "$sock" run -d --rootfs --runtime "$shim" --runc-root "$D/runc" "$D/rootfs" "through-demo-$$" /bin/sleep 100000 >/dev/null
ctr --address "$sock" task ls
# The container's parent is its shim process (a subreaper): found by PID, not by matching its command
# line, which names the versioned file bin/ links to.
task_pid=$(ctr --address "$sock" task ls | awk -v id="through-demo-$$" '$1 == id { print $2 }')
shim_pid=$(ps -o ppid= -p "$task_pid" | tr -d ' ')
ps -o pid,args -p "$shim_pid" | cat
say "its shim runs $(readlink "/proc/$shim_pid/exe")"

bold "kwasm-agent remove   (refuses while a container runs on the shim)"
"$agent" remove --config "$D/settings.toml" || say "-> left in place, as it must be"
ctr --address "$sock" task kill -s SIGKILL "through-demo-$$" >/dev/null
for _ in $(seq 200); do ctr --address "$sock" task ls | grep -q "^through-demo-$$ .*RUNNING" || break; sleep 0.02; done
ctr --address "$sock" task delete "through-demo-$$" >/dev/null
ctr --address "$sock" container delete "through-demo-$$" >/dev/null

bold "kwasm-agent remove"
"$agent" remove --config "$D/settings.toml"

bold "The proof"
if cmp -s "$D/config.toml" "$D/config.toml.orig"; then say "config.toml is byte-identical to the original"; else say "config.toml DIFFERS"; diff "$D/config.toml.orig" "$D/config.toml"; exit 1; fi
[ ! -e "$shim" ] && say "shim binary removed"
now=$(web_pid)
if [ "$now" = "$first_pid" ]; then say "container web-$$ kept pid $first_pid through apply and remove"; else say "container pid changed: $first_pid -> $now"; exit 1; fi
