#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the test WebAssembly shim (tests/wasm-shim: runwasi's containerd-shim-wasm + wasmtime) in
# release mode and packs it like an upstream release archive: containerd-shim-wasmtime-v1 at the root
# of a .tar.gz. The archive's path is the LAST line of output (other scripts and the tests read it).
# The first build takes about ten minutes; later ones reuse cargo's cache and the packed archive.
set -euo pipefail
cd "$(dirname "$0")/.."
crate=tests/wasm-shim
bin=containerd-shim-wasmtime-v1

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists libseccomp 2>/dev/null || need+=(libseccomp-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

target="${KWASM_WASM_SHIM_TARGET:-$PWD/$crate/target}"
echo "==> building $bin (release; the first build takes about ten minutes)" >&2
cargo build --release --locked --quiet --manifest-path "$crate/Cargo.toml" --target-dir "$target" >&2

out="$target/release"
archive="$out/$bin-linux-$(uname -m).tar.gz"
# Repack only when the binary changed, with fixed metadata, so the archive (and its digest) is stable.
if [ ! -f "$archive" ] || [ "$out/$bin" -nt "$archive" ]; then
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$out" -cf - "$bin" \
    | gzip -n > "$archive.tmp"
  mv "$archive.tmp" "$archive"
fi
echo "$archive"
