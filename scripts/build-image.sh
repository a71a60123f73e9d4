#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the agent's container image offline (no Docker daemon needed): a static release binary (glibc
# with crt-static) and the CA bundle on an empty base — what images/Dockerfile builds — written as an
# OCI image archive that `ctr images import` and skopeo accept. Prints the archive's path as its LAST
# line, after the image's size.
#   scripts/build-image.sh [TAG]    (default: the chart's appVersion)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-$(awk -F'"' '/^appVersion:/ {print $2}' manifests/helm/kwasm-agent/Chart.yaml)}
arch=$(uname -m)
target="$arch-unknown-linux-gnu"
ca=/etc/ssl/certs/ca-certificates.crt
[ -r "$ca" ] || { echo "no CA bundle at $ca (Debian: ca-certificates)" >&2; exit 1; }

echo "==> static release build for $target (the first one takes a few minutes: fat LTO)" >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet \
  -p kwasm-agent --target "$target" >&2
binary="target/$target/release/kwasm-agent"
if ldd "$binary" 2>&1 | grep -q "=>"; then
  echo "$binary is dynamically linked; the image has no libraries" >&2
  exit 1
fi
cargo build --quiet -p kwasm-tests --bin kw-image >&2

out="target/image"
mkdir -p "$out"
archive="$PWD/$out/kwasm-agent-$tag-$arch.oci.tar"
./target/debug/kw-image "$binary" "$ca" "ghcr.io/kwasm/kwasm-agent:$tag" "$archive" 2>"$out/size.txt"
echo "binary $(stat -c %s "$binary") bytes; $(cat "$out/size.txt"); archive $(stat -c %s "$archive") bytes" >&2
echo "$archive"
