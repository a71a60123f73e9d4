# shellcheck shell=bash
# Shared by demo.sh and bench.sh: a real containerd in one temp directory ($D), restarted by
# $D/restart.sh exactly as `systemctl restart containerd` treats a KillMode=process unit, plus a tiny
# root filesystem for containers. Its CRI plugin runs pods (restrict_oom_score_adj: this machine does
# not let containerd lower it; a local pause image). Source it after setting D.

sandbox_containerd() {
  sock="$D/c.sock"
  mkdir -p "$D/path"
  containerd config default | sed \
    -e "s|^root = .*|root = \"$D/root\"|" \
    -e "s|^state = .*|state = \"$D/state\"|" \
    -e "0,/^  address = \"\/run\/containerd\/containerd.sock\"/s||  address = \"$sock\"|" \
    -e "s|path = \"/opt/containerd\"|path = \"$D/opt\"|" \
    -e "s|restrict_oom_score_adj = false|restrict_oom_score_adj = true|" \
    -e "s|sandbox_image = .*|sandbox_image = \"registry.kwasm.test/pause:1\"|" > "$D/config.toml"
  cp "$D/config.toml" "$D/config.toml.orig"
  cat > "$D/restart.sh" <<EOS
#!/bin/sh
# What 'systemctl restart containerd' does for a unit with KillMode=process: the daemon only.
pidfile=$D/containerd.pid
if [ -f "\$pidfile" ] && kill -0 "\$(cat "\$pidfile")" 2>/dev/null; then
  kill -TERM "\$(cat "\$pidfile")"
  while kill -0 "\$(cat "\$pidfile")" 2>/dev/null; do sleep 0.02; done
fi
PATH=$D/path:\$PATH setsid containerd --config $D/config.toml >>$D/containerd.log 2>&1 </dev/null &
echo \$! > "\$pidfile"
EOS
  chmod +x "$D/restart.sh"
  "$D/restart.sh"
  wait_containerd
}

wait_containerd() {
  for _ in $(seq 600); do ctr --address "$sock" version >/dev/null 2>&1 && return 0; sleep 0.01; done
  echo "containerd did not answer on $sock" >&2
  return 1
}

sandbox_rootfs() {
  mkdir -p "$D/rootfs/bin"
  cp /usr/bin/sleep "$D/rootfs/bin/"
  for lib in $(ldd /usr/bin/sleep | grep -o '/[^ ]*'); do mkdir -p "$D/rootfs$(dirname "$lib")"; cp "$lib" "$D/rootfs$lib"; done
}

# The shim the sandbox serves: name, runtime type, binary, release file, digest. Default: the test
# shim, containerd's runc shim renamed and packed as a release tarball in $D/www.
sandbox_shim_release() {
  mkdir -p "$D/www" "$D/pkg"
  cp /usr/bin/containerd-shim-runc-v2 "$D/pkg/containerd-shim-demo-v2"
  tar -C "$D/pkg" -czf "$D/www/containerd-shim-demo-v2-linux-x86_64.tar.gz" containerd-shim-demo-v2
  sandbox_serve_shim demo io.containerd.demo.v2 containerd-shim-demo-v2 "$D/www/containerd-shim-demo-v2-linux-x86_64.tar.gz"
}

# sandbox_serve_shim NAME RUNTIME_TYPE BINARY ARCHIVE: serve ARCHIVE (for both architectures).
sandbox_serve_shim() {
  shim_name=$1 shim_type=$2 shim_bin=$3
  mkdir -p "$D/www"
  shim_file=$(basename "$4")
  [ "$4" -ef "$D/www/$shim_file" ] || cp "$4" "$D/www/$shim_file"
  shim_sha=$(sha256sum "$D/www/$shim_file" | cut -d' ' -f1)
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Agent settings for the sandbox: $1 = artifact server port, extra TOML on stdin is appended.
sandbox_settings() {
  cat > "$D/settings.toml" <<EOS
[host]
root = "/"
install_dir = "$D/opt/kwasm"

[artifacts]
allow_http = true          # loopback only

[containerd]
config = "$D/config.toml"
socket = "$sock"
restart = ["$D/restart.sh"]
timeout = "20s"
link_dir = "$D/path"       # on this containerd's PATH: runtime names resolve to the shims

$(cat)

$(sandbox_shim_toml "$1")
EOS
}

# The served shim as a catalog entry: $1 = artifact server port.
sandbox_shim_toml() {
  cat <<EOS
[[shims]]
name = "$shim_name"
runtime_type = "$shim_type"
binary = "$shim_bin"
version = "v1.0.0"
  [[shims.platforms]]
  arch = "amd64"
  url = "http://127.0.0.1:$1/$shim_file"
  sha256 = "$shim_sha"
  [[shims.platforms]]
  arch = "arm64"
  url = "http://127.0.0.1:$1/$shim_file"
  sha256 = "$shim_sha"
EOS
}

# Detach whatever a pod left mounted under $D (an interrupted run), deepest first.
sandbox_unmount() {
  grep -o " $D/[^ ]*" /proc/self/mounts 2>/dev/null | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
}
