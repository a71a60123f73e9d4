# shellcheck shell=bash
# A Debian unstable chroot made by mmdebstrap, installing nothing on this machine: mmdebstrap itself
# is taken from its Debian package (apt-get download: checked against this machine's signed package
# index) and unpacked under target/toolchain. APT checks every package of the chroot against
# unstable's signed index; the index may be older than the clock here (the archive is a snapshot),
# so its Valid-Until is not enforced — its signature is. Cached: a chroot whose stamp names the same
# packages is kept. Source it from the repo root.

# sid_chroot ROOT PACKAGES [MMDEBSTRAP ARGS...]: make ROOT (a Debian unstable chroot with PACKAGES,
# comma-separated) unless it is there already.
sid_chroot() {
  local root=$1 packages=$2
  shift 2
  local dir=$PWD/target/toolchain stamp=$root/.kwasm-toolchain
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$packages" ]; then
    return 0
  fi
  mkdir -p "$dir/mmdebstrap"
  if [ ! -x "$dir/mmdebstrap/usr/bin/mmdebstrap" ]; then
    echo "==> mmdebstrap (from its Debian package, unpacked under $dir)" >&2
    rm -f "$dir"/mmdebstrap_*.deb
    (cd "$dir" && apt-get download -qq mmdebstrap 2>/dev/null) \
      || { apt-get update -qq && (cd "$dir" && apt-get download -qq mmdebstrap 2>/dev/null); }
    dpkg -x "$dir"/mmdebstrap_*.deb "$dir/mmdebstrap"
  fi
  # The machine's own Debian archive (not its security archive), as scripts/containerd-releases.sh.
  local archive
  # shellcheck disable=SC2016 # APT's own $(FIELD) placeholders
  archive=$(apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' \
    | grep -v security | head -n 1)
  [ -n "$archive" ] || { echo "no Debian archive configured in APT" >&2; return 1; }
  echo "==> Debian unstable chroot with $packages ($root; a minute or two)" >&2
  rm -rf "$root"
  perl "$dir/mmdebstrap/usr/bin/mmdebstrap" --quiet --variant=apt \
    --aptopt='Acquire::Check-Valid-Until "false"' --include="$packages" "$@" \
    sid "$root" "$archive" >&2
  echo "$packages" >"$stamp"
}
