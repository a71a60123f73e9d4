#!/bin/sh
# Boots a production-like node: systemd as PID 1 of its own PID, mount, UTS, IPC and cgroup
# namespaces, its root an overlay whose lower layer is this machine's `/`, sharing the network (so
# loopback reaches the test's servers). Nothing of it reaches the machine: the overlay's upper layer
# is a tmpfs, /var/lib/containerd a directory of the node's, every mount private to its namespace,
# and its cgroups children of one `kwnode.<id>` cgroup per hierarchy, removed by the harness.
#
#   boot.sh NODE_DIR ID       (run by tests/src/systemd_node.rs)
#
# NODE_DIR holds seed/ (copied into the upper layer before the overlay is mounted: the containerd
# release, its config and unit, unit masks) and gets varlib/ (the node's /var/lib/containerd).
# NODE_DIR's parent is bound into the node at the same path, so the test and the node share it.
set -eu

if [ "${1:-}" != inner ]; then
  node_dir=$1 id=$2
  # Every cgroup hierarchy of the machine gets a kwnode.<id> child holding the node; with a cgroup
  # namespace rooted there, systemd inside sees it as its whole tree.
  awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts | while read -r h; do
    d=$h/kwnode.$id
    mkdir -p "$d"
    if [ -e "$h/cpuset.cpus" ] && [ -e "$d/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" > "$d/cpuset.cpus"
      cat "$h/cpuset.mems" > "$d/cpuset.mems"
    fi
    echo $$ > "$d/cgroup.procs"
  done
  exec unshare --pid --fork --mount --uts --ipc --cgroup --propagation private \
    /bin/sh "$0" inner "$node_dir" "$id"
fi

# PID 1 of the new namespace. First of all (before any command takes a PID), PIDs 2-64 go to sleepers,
# as a real kernel's threads hold the low PIDs of a node. It matters: runwasi's shims (youki's
# libcontainer 0.6), mounting cgroup v1 into a pod's container, read /proc/<the container's PID in
# the pod's namespace>/cgroup through containerd's /proc — PID 2 or 3 — and fail with "failed to
# prepare rootfs" when no such process exists there.
i=2
while [ "$i" -le 64 ]; do
  sleep infinity >/dev/null 2>&1 &
  i=$((i + 1))
done
node_dir=$2 id=$3
shared=$(dirname "$node_dir")
m=$node_dir/merged
layer=$node_dir/layer
mkdir -p "$m" "$layer" "$node_dir/varlib"
mount -t tmpfs -o mode=755 "kwnode-$id" "$layer"
mkdir -p "$layer/upper" "$layer/work"
cp -a "$node_dir/seed/." "$layer/upper/"
mount -t overlay "kwnode-$id" -o "lowerdir=/,upperdir=$layer/upper,workdir=$layer/work" "$m"

mount --rbind /dev "$m/dev"
mount -t proc proc "$m/proc"
mount -t sysfs sysfs "$m/sys"
mount -t tmpfs -o mode=755 cgroup "$m/sys/fs/cgroup"
awk '$3 == "cgroup" || $3 == "cgroup2" { print $2, $3, $4 }' /proc/self/mounts | while read -r path type opts; do
  mkdir -p "$m$path"
  mount -t "$type" -o "$opts" "$type" "$m$path"
done
mount -t tmpfs -o mode=755 run "$m/run"
mkdir -p "$m/var/lib/containerd"
mount --bind "$node_dir/varlib" "$m/var/lib/containerd"
mkdir -p "$m$shared"
mount --bind "$shared" "$m$shared"

hostname "kwnode-$id"
cd "$m"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
# systemd makes / a shared mount on a real node (not in a container, where it leaves it): the
# DaemonSet's /host mount with HostToContainer propagation needs that.
mount --make-rshared /
export container=other
exec /lib/systemd/systemd --system --unit=multi-user.target
