#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the tests' Kubernetes API server (tests/kube-apiserver: Kubernetes' own server libraries
# composed as kube-apiserver composes them) and takes etcd, both from Debian unstable's packages,
# offline, in a chroot under target/toolchain/go-sid (scripts/lib/sid.sh): golang-go,
# golang-k8s-apiserver-dev, golang-k8s-apiextensions-apiserver-dev (with their dependencies:
# k8s.io/api, client-go, kube-openapi, …) and etcd-server. The OpenAPI definitions of k8s.io/api's
# types are generated there by kube-openapi's openapi-gen, as Kubernetes' build generates them. The
# binary is static (it runs on this machine's older C library). Cached by the sources' digest: a
# second run does nothing. The directory holding `kube-apiserver` and `etcd` is the LAST line of
# output. The first run takes about 2 minutes for the chroot and 5 CPU-minutes for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/sid.sh
root=$PWD/target/toolchain/go-sid
sid_chroot "$root" golang-go,golang-k8s-apiserver-dev,golang-k8s-apiextensions-apiserver-dev,etcd-server,ca-certificates

# shellcheck disable=SC2016 # dpkg-query's own ${Field} placeholder
k8s=$(chroot "$root" dpkg-query -W -f '${Version}' golang-k8s-apiserver-dev | sed -E 's/^([0-9.]+).*/\1/; s/^0\./1./')
digest=$(cat scripts/kube-apiserver.sh tests/kube-apiserver/*.go | sha256sum | cut -c1-16)
out=$PWD/target/kube-apiserver/$digest
if [ ! -x "$out/kube-apiserver" ]; then
  echo "==> kube-apiserver from Kubernetes $k8s's server libraries (tests/kube-apiserver; cached in $out)" >&2
  rm -rf "$root/build/src" && mkdir -p "$root/build/src/kwasm.test/kube-apiserver/openapi" "$out.tmp"
  cp tests/kube-apiserver/*.go "$root/build/src/kwasm.test/kube-apiserver/"
  # GOPATH mode resolves a /vN import path (go-restful/v3) only from a tree that has a go.mod.
  echo "module kwasm.test/kube-apiserver" >"$root/build/src/kwasm.test/kube-apiserver/go.mod"
  # Go wants /proc; it is mounted in a mount namespace of its own, gone when the build ends.
  # shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
  unshare --mount --propagation private bash -euo pipefail -c '
    mount -t proc proc "$1/proc"
    chroot "$1" env GO111MODULE=off GOPATH=/build:/usr/share/gocode GOPROXY=off GOFLAGS= \
      GOCACHE=/root/.cache/go-build CGO_ENABLED=0 HOME=/root bash -euo pipefail -c "
        cd /build
        [ -x bin/openapi-gen ] || go build -o bin/openapi-gen k8s.io/kube-openapi/cmd/openapi-gen
        bin/openapi-gen --output-dir src/kwasm.test/kube-apiserver/openapi \
          --output-pkg kwasm.test/kube-apiserver/openapi --output-file zz_generated.openapi.go \
          --go-header-file /dev/null --report-filename /build/api-violations.txt \
          k8s.io/api/core/v1 k8s.io/api/apps/v1 k8s.io/api/batch/v1 k8s.io/api/coordination/v1 \
          k8s.io/api/node/v1 k8s.io/api/events/v1 k8s.io/api/rbac/v1 k8s.io/api/admissionregistration/v1 \
          k8s.io/api/authentication/v1 k8s.io/api/autoscaling/v1 k8s.io/api/policy/v1 \
          k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/api/resource \
          k8s.io/apimachinery/pkg/util/intstr k8s.io/apimachinery/pkg/runtime k8s.io/apimachinery/pkg/version
        go build -trimpath -o /build/kube-apiserver -ldflags \"-s -w \
          -X k8s.io/component-base/version.gitVersion=v$2 -X k8s.io/component-base/version.gitMajor=${2%%.*} \
          -X k8s.io/component-base/version.gitMinor=$(echo "$2" | cut -d. -f2) \
          -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=v$2\" \
          kwasm.test/kube-apiserver
      "
  ' _ "$root" "$k8s"
  cp "$root/build/kube-apiserver" "$root/usr/bin/etcd" "$out.tmp/"
  rm -rf "$out" && mv "$out.tmp" "$out"
  # A clean clone under CI builds once: its 1.6 GB of compiled packages would only fill the disk.
  if [ -n "${CI:-}" ]; then rm -rf "$root/root/.cache/go-build"; fi
fi
echo "$("$out/kube-apiserver" --version 2>/dev/null || echo "kube-apiserver $k8s"), $("$out/etcd" --version | head -n 1) in $out" >&2
echo "$out"
