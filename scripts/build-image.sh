#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the agent's container image offline (no Docker daemon needed), for amd64 and arm64: a static
# binary per architecture (glibc with crt-static) and the CA bundle on an empty base — what
# images/Dockerfile builds — written as one OCI image index (a manifest per platform) in an OCI image
# archive that `ctr images import --all-platforms` and skopeo accept. amd64 is built by this
# machine's Rust toolchain; arm64 by Debian's rustc with the arm64 standard library and
# gcc-aarch64-linux-gnu, in the chroot scripts/arm64-toolchain.sh sets up (nothing is installed
# here). Prints the sizes, then the archive's path as its LAST line.
#   scripts/build-image.sh [TAG]    (default: the chart's appVersion)
#   KWASM_IMAGE_PROFILE=PROFILE     cargo profile of both builds (default release: fat LTO;
#                                   scripts/test.sh uses release-ci, the same without fat LTO)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-$(awk -F'"' '/^appVersion:/ {print $2}' manifests/helm/kwasm-agent/Chart.yaml)}
profile=${KWASM_IMAGE_PROFILE:-release}
ca=/etc/ssl/certs/ca-certificates.crt
[ -r "$ca" ] || { echo "no CA bundle at $ca (Debian: ca-certificates)" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || { echo "builds from an x86_64 machine (found $(uname -m))" >&2; exit 1; }

static() {
  if readelf -l "$1" | grep -q INTERP; then
    echo "$1 is dynamically linked; the image has no libraries" >&2
    exit 1
  fi
}

echo "==> static $profile build for x86_64-unknown-linux-gnu" >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile "$profile" --locked --quiet \
  -p kwasm-agent --target x86_64-unknown-linux-gnu >&2
amd64="target/x86_64-unknown-linux-gnu/$profile/kwasm-agent"
static "$amd64"

root=$(bash scripts/arm64-toolchain.sh | tail -n 1)
echo "==> static $profile build for aarch64-unknown-linux-gnu (Debian's cross toolchain in $root)" >&2
registry=${CARGO_HOME:-$HOME/.cargo}/registry
mkdir -p "$registry" "$root/src" "$root/root/.cargo/registry"
# A private mount namespace: the bind mounts end with the build, whatever happens to it.
# shellcheck disable=SC2016 # expanded by the inner shell
unshare --mount --propagation private sh -ec '
  root=$1 registry=$2 profile=$3
  mount --bind "$PWD" "$root/src"
  mount --bind "$registry" "$root/root/.cargo/registry"
  mount -t proc proc "$root/proc"
  chroot "$root" env -i HOME=/root PATH=/usr/bin:/bin \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
    RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --profile "$profile" --locked --quiet -p kwasm-agent \
      --target aarch64-unknown-linux-gnu --target-dir /src/target/arm64 --manifest-path /src/Cargo.toml
' sh "$root" "$registry" "$profile" >&2
arm64="target/arm64/aarch64-unknown-linux-gnu/$profile/kwasm-agent"
static "$arm64"

cargo build --quiet -p kwasm-tests --bin kw-image >&2
out="target/image"
mkdir -p "$out"
archive="$PWD/$out/kwasm-agent-$tag.oci.tar"
./target/debug/kw-image "$ca" "ghcr.io/kwasm/kwasm-agent:$tag" "$archive" \
  "amd64=$amd64" "arm64=$arm64" 2>"$out/size.txt"
cat "$out/size.txt" >&2
echo "archive $(stat -c %s "$archive") bytes" >&2
echo "$archive"
