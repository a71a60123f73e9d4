#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Sets up the arm64 cross toolchain from Debian's archive, installing nothing on this machine: a
# Debian unstable chroot under target/toolchain/sid holding Debian's rustc/cargo, the Rust standard
# library for arm64 (libstd-rust-dev:arm64), gcc-aarch64-linux-gnu with the arm64 C library (for a
# static binary) and protobuf-compiler. It is made by mmdebstrap, itself taken from its Debian
# package (apt-get download: checked against this machine's signed package index) and unpacked under
# target/toolchain. APT checks every package of the chroot against unstable's signed index; the index
# may be older than the clock here (the archive is a snapshot), so its Valid-Until is not enforced —
# its signature is. Cached: a second run does nothing. The chroot's path is the LAST line of output.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$PWD/target/toolchain
root=$dir/sid
packages=rustc,cargo,libstd-rust-dev:arm64,gcc-aarch64-linux-gnu,libc6-dev-arm64-cross,protobuf-compiler,ca-certificates
stamp=$root/.kwasm-toolchain

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$packages" ]; then
  mkdir -p "$dir/mmdebstrap"
  if [ ! -x "$dir/mmdebstrap/usr/bin/mmdebstrap" ]; then
    echo "==> mmdebstrap (from its Debian package, unpacked under $dir)" >&2
    rm -f "$dir"/mmdebstrap_*.deb
    (cd "$dir" && apt-get download -qq mmdebstrap 2>/dev/null) \
      || { apt-get update -qq && (cd "$dir" && apt-get download -qq mmdebstrap 2>/dev/null); }
    dpkg -x "$dir"/mmdebstrap_*.deb "$dir/mmdebstrap"
  fi
  # The machine's own Debian archive (not its security archive), as scripts/containerd-releases.sh.
  # shellcheck disable=SC2016 # APT's own $(FIELD) placeholders
  archive=$(apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' \
    | grep -v security | head -n 1)
  [ -n "$archive" ] || { echo "no Debian archive configured in APT" >&2; exit 1; }
  echo "==> Debian unstable chroot with the arm64 cross toolchain ($root; about a minute)" >&2
  rm -rf "$root"
  perl "$dir/mmdebstrap/usr/bin/mmdebstrap" --quiet --variant=apt --architectures=amd64,arm64 \
    --aptopt='Acquire::Check-Valid-Until "false"' --include="$packages" \
    sid "$root" "$archive" >&2
  echo "$packages" >"$stamp"
fi
echo "$(chroot "$root" rustc --version) in $root" >&2
echo "$root"
