#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The whole test suite, as CI runs it: installs what the tests need (Debian packages, and the chart
# tests' Python packages in a venv under target/), then format check, clippy with warnings as errors,
# ShellCheck, the Helm chart's tests (Helm's engine, Kubernetes 1.30-1.37 schemas, CEL), and every
# Rust test: unit, integration against a real containerd, end-to-end with the real kubectl against a
# real Kubernetes API server (tests/kube-apiserver: Kubernetes' own server libraries on etcd, from
# Debian's packages, built offline by scripts/kube-apiserver.sh; about five minutes the first time),
# WASI modules through CRI on a wasm shim built from runwasi's crates (tests/wasm-shim, by
# scripts/build-wasm-shim.sh; its first build takes about ten minutes), the agent's image run as the
# DaemonSet's pod (scripts/build-image.sh: amd64 and arm64, the arm64 agent run under qemu-user),
# production nodes under a real systemd with containerd 1.6, 1.7 and 2.1
# (scripts/containerd-releases.sh), and both demos as a new user runs them. Extra arguments go to the
# test runner.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v kubectl >/dev/null || need+=(kubernetes-client)
command -v shellcheck >/dev/null || need+=(shellcheck)
# Agents on clocks minutes apart (tests/tests/fleet.rs).
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(libfaketime)
# The arm64 agent runs under qemu-user in tests/tests/arm64.rs.
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
[ -r /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
# The WebAssembly end-to-end test: WAT workloads, static native workloads, and the wasm shim's build.
command -v wat2wasm >/dev/null || need+=(wabt)
command -v cc >/dev/null || need+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || need+=(libc6-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists libseccomp 2>/dev/null || need+=(libseccomp-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

mkdir -p target
# A cold run writes about 12 GB (7 GB under target/ for the Rust build, 3 GB for the API server's
# chroot, 1.6 GB the wasm shim's; the last line of the output says): say so before a full disk does.
free_gb=$(df -Pk target | awk 'NR == 2 { print int($4 / 1048576) }')
echo "==> disk: ${free_gb} GB free under target/"
[ "$free_gb" -ge 14 ] || echo "warning: a cold run needs about 14 GB free under target/; the build may fail with 'No space left on device'" >&2

echo "==> cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path tests/wasm-shim/Cargo.toml -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> shellcheck"
shellcheck -x scripts/*.sh scripts/lib/*.sh
echo "==> build"
cargo build --workspace --bins --quiet

echo "==> Prometheus and promtool (scripts/prometheus.sh)"
KWASM_PROMETHEUS=$(bash scripts/prometheus.sh | tail -n 1)
export KWASM_PROMETHEUS
echo "==> chart (Helm engine, Kubernetes 1.30-1.37 schemas, alerts by promtool)"
. "$(dirname "$0")/lib/venv.sh"
ensure_venv
KWASM_AGENT="$PWD/target/debug/kwasm-agent" "$venv_python" -m unittest discover -s tests/chart

echo "==> Kubernetes API server for the cluster tests (scripts/kube-apiserver.sh)"
KWASM_KUBE_APISERVER=$(bash scripts/kube-apiserver.sh | tail -n 1)
export KWASM_KUBE_APISERVER
echo "==> wasm shim (tests/wasm-shim)"
KWASM_WASM_SHIM_ARCHIVE=$(bash scripts/build-wasm-shim.sh | tail -n 1)
export KWASM_WASM_SHIM_ARCHIVE
echo "==> containerd releases for the systemd nodes (scripts/containerd-releases.sh)"
KWASM_CONTAINERD_RELEASES=$(bash scripts/containerd-releases.sh | tail -n 1)
export KWASM_CONTAINERD_RELEASES
echo "==> agent image for amd64 and arm64 (scripts/build-image.sh, profile release-ci)"
KWASM_IMAGE_ARCHIVE=$(KWASM_IMAGE_PROFILE=${KWASM_IMAGE_PROFILE:-release-ci} bash scripts/build-image.sh | tail -n 1)
export KWASM_IMAGE_ARCHIVE

echo "==> the demos, as a new user runs them (scripts/demo.sh, scripts/demo.sh --wasm)"
for mode in plain wasm; do
  args=()
  [ "$mode" = wasm ] && args=(--wasm)
  if ! bash scripts/demo.sh "${args[@]}" >"target/demo-$mode.log" 2>&1; then
    cat "target/demo-$mode.log"
    echo "scripts/demo.sh ${args[*]} failed (log above)" >&2
    exit 1
  fi
  grep -E "byte-identical|kept pid" "target/demo-$mode.log"
done

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
echo "==> disk used: $(du -sh target | cut -f1) target/, $(du -sh tests/wasm-shim/target | cut -f1) tests/wasm-shim/target/"
