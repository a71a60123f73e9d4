#!/usr/bin/env bash
# Fetches the containerd releases the production-node tests run beside this machine's own (Debian 12's
# 1.6.20): Debian 13's 1.7.24 and Debian unstable's 2.1.9, as Debian packages through a side APT
# configuration (its own sources list, lists and cache under target/, the machine's Debian archive
# and archive keyring) — nothing is installed on this machine. Each package's SHA-256 is checked
# against the one pinned here, then it is unpacked (dpkg -x) into
# target/containerd-releases/<version>/. Cached: a second run downloads nothing.
# The directory is the LAST line of output (scripts/test.sh passes it as KWASM_CONTAINERD_RELEASES).
#
# If an archive no longer serves a pinned version (unstable moves on), the newest package of the same
# minor release in that suite is taken instead, checked against the digest of the signed index, and a
# warning says so.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/target/containerd-releases
apt_dir=$out/apt
# version  suite  sha256 of the .deb
releases=(
  "1.7.24~ds1-6+deb13u1 trixie ed708deb96fe476a3bce4efa5c0538dfbcf717ab9a7c7944ba7260342c25899c"
  "2.1.9+ds1-5 sid 2dda86ce7033fd612fc50e136679d8174ccad680eb29cd4611e0d2a1b84cf591"
)

upstream() { local v=${1%%[~+-]*}; echo "$v"; }

missing=()
for r in "${releases[@]}"; do
  read -r version _ sha <<<"$r"
  stamp=$out/$(upstream "$version")/.sha256
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sha" ] || missing+=("$r")
done

if [ ${#missing[@]} -gt 0 ]; then
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/download"
  # The machine's own Debian archive (not its security archive) and keyring.
  # shellcheck disable=SC2016 # APT's own $(FIELD) placeholders
  archive=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' \
    | awk '$2 !~ /security/ { print $1; exit }')
  [ -n "$archive" ] || { echo "no Debian archive configured in APT" >&2; exit 1; }
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  {
    echo "deb [signed-by=$keyring] $archive trixie main"
    echo "deb [signed-by=$keyring] $archive sid main"
  } >"$apt_dir/sources.list"
  apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false
    -o Acquire::Languages=none -o APT::Sandbox::User=root
  )
  echo "==> side APT lists (trixie, sid)" >&2
  apt-get "${apt_opts[@]}" update -qq >&2
  for r in "${missing[@]}"; do
    read -r version suite sha <<<"$r"
    minor=$(upstream "$version" | cut -d. -f1,2)
    available=$(apt-cache "${apt_opts[@]}" madison containerd | awk -F' [|] ' -v s="$suite" '$3 ~ s { print $2 }')
    if ! grep -qxF "$version" <<<"$available"; then
      newer=$(grep -E "^${minor//./\\.}\." <<<"$available" | head -n 1 || true)
      [ -n "$newer" ] || { echo "containerd $version (or any $minor.x) is no longer in $suite" >&2; exit 1; }
      echo "warning: containerd $version is no longer in $suite; using $newer, checked against the signed index" >&2
      version=$newer
      sha=$(apt-cache "${apt_opts[@]}" show "containerd=$version" | awk '/^SHA256:/ { print $2; exit }')
    fi
    echo "==> containerd $version ($suite)" >&2
    rm -f "$apt_dir/download/"*.deb
    (cd "$apt_dir/download" && apt-get "${apt_opts[@]}" download -qq "containerd=$version" >&2)
    deb=$(ls "$apt_dir/download/"*.deb)
    got=$(sha256sum "$deb" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
      echo "containerd $version: the package's SHA-256 is $got, expected $sha" >&2
      exit 1
    fi
    dest=$out/$(upstream "$version")
    rm -rf "$dest" && mkdir -p "$dest"
    dpkg -x "$deb" "$dest"
    echo "$got" >"$dest/.sha256"
    rm -f "$deb"
  done
fi
rm -rf "$apt_dir"
echo "$out"
