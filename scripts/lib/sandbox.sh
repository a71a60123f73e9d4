# Shared by demo.sh and bench-agent.sh: a real containerd in one temp directory ($D), restarted by
# $D/restart.sh exactly as `systemctl restart containerd` treats a KillMode=process unit, plus a tiny
# root filesystem for containers. Source it after setting D.

sandbox_containerd() {
  sock="$D/c.sock"
  containerd config default | sed \
    -e "s|^root = .*|root = \"$D/root\"|" \
    -e "s|^state = .*|state = \"$D/state\"|" \
    -e "0,/^  address = \"\/run\/containerd\/containerd.sock\"/s||  address = \"$sock\"|" \
    -e "s|path = \"/opt/containerd\"|path = \"$D/opt\"|" > "$D/config.toml"
  cp "$D/config.toml" "$D/config.toml.orig"
  cat > "$D/restart.sh" <<EOS
#!/bin/sh
# What 'systemctl restart containerd' does for a unit with KillMode=process: the daemon only.
pidfile=$D/containerd.pid
if [ -f "\$pidfile" ] && kill -0 "\$(cat "\$pidfile")" 2>/dev/null; then
  kill -TERM "\$(cat "\$pidfile")"
  while kill -0 "\$(cat "\$pidfile")" 2>/dev/null; do sleep 0.02; done
fi
setsid containerd --config $D/config.toml >>$D/containerd.log 2>&1 </dev/null &
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

# The test shim: containerd's runc shim renamed, packed as a release tarball in $D/www.
sandbox_shim_release() {
  mkdir -p "$D/www" "$D/pkg"
  cp /usr/bin/containerd-shim-runc-v2 "$D/pkg/containerd-shim-demo-v2"
  tar -C "$D/pkg" -czf "$D/www/containerd-shim-demo-v2-linux-x86_64.tar.gz" containerd-shim-demo-v2
  cp "$D/www/containerd-shim-demo-v2-linux-x86_64.tar.gz" "$D/www/containerd-shim-demo-v2-linux-aarch64.tar.gz"
  shim_sha=$(sha256sum "$D/www/containerd-shim-demo-v2-linux-x86_64.tar.gz" | cut -d' ' -f1)
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

$(cat)

[[shims]]
name = "demo"
runtime_type = "io.containerd.demo.v2"
binary = "containerd-shim-demo-v2"
version = "v1.0.0"
  [[shims.platforms]]
  arch = "amd64"
  url = "http://127.0.0.1:$1/containerd-shim-demo-v2-linux-x86_64.tar.gz"
  sha256 = "$shim_sha"
  [[shims.platforms]]
  arch = "arm64"
  url = "http://127.0.0.1:$1/containerd-shim-demo-v2-linux-aarch64.tar.gz"
  sha256 = "$shim_sha"
EOS
}
