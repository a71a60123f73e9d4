#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The whole test suite, as CI runs it: installs what the tests need (Debian packages), then format
# check, clippy with warnings as errors, and every test (unit, integration against a real containerd,
# end-to-end with the real kubectl, and WASI modules through CRI on a wasm shim built from runwasi's
# crates: tests/wasm-shim, by scripts/build-wasm-shim.sh; its first build takes about ten minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v kubectl >/dev/null || need+=(kubernetes-client)
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

echo "==> cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path tests/wasm-shim/Cargo.toml -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> build"
cargo build --workspace --bins --quiet
echo "==> wasm shim (tests/wasm-shim)"
KWASM_WASM_SHIM_ARCHIVE=$(bash scripts/build-wasm-shim.sh | tail -n 1)
export KWASM_WASM_SHIM_ARCHIVE
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
