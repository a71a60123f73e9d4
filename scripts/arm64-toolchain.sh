#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Sets up the arm64 cross toolchain from Debian's archive, installing nothing on this machine: a
# Debian unstable chroot under target/toolchain/sid (scripts/lib/sid.sh) holding Debian's
# rustc/cargo, the Rust standard library for arm64 (libstd-rust-dev:arm64), gcc-aarch64-linux-gnu
# with the arm64 C library (for a static binary) and protobuf-compiler. Cached: a second run does
# nothing. The chroot's path is the LAST line of output.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/sid.sh
root=$PWD/target/toolchain/sid
sid_chroot "$root" rustc,cargo,libstd-rust-dev:arm64,gcc-aarch64-linux-gnu,libc6-dev-arm64-cross,protobuf-compiler,ca-certificates \
  --architectures=amd64,arm64
echo "$(chroot "$root" rustc --version) in $root" >&2
echo "$root"
