{{/*
The two security modes of the agent's pod (docs/install.md: "Security modes").
privileged: the host's / at /host, hostPID, a privileged container.
restricted: no privileges, no host PID namespace, and hostPath mounts of exactly what the agent
touches, each at /host<path>.
*/}}

{{/* Host paths of each containerd flavor: its config directory, its socket's directory, and the
directory of its containerd binary (validating a candidate config runs it). */}}
{{- define "kwasm-agent.flavorPaths" -}}
{{- $paths := dict
  "containerd" (dict "config" "/etc/containerd" "socket" "/run/containerd" "binary" "/usr")
  "k3s" (dict "config" "/var/lib/rancher/k3s/agent/etc/containerd" "socket" "/run/k3s/containerd" "binary" "/var/lib/rancher/k3s/data")
  "rke2" (dict "config" "/var/lib/rancher/rke2/agent/etc/containerd" "socket" "/run/k3s/containerd" "binary" "/var/lib/rancher/rke2/bin")
  "k0s" (dict "config" "/etc/k0s/containerd.d" "socket" "/run/k0s" "binary" "/var/lib/k0s/bin")
  "microk8s" (dict "config" "/var/snap/microk8s/current/args" "socket" "/var/snap/microk8s/common/run" "binary" "/snap/microk8s/current/bin")
-}}
{{- $p := index $paths .Values.restricted.flavor -}}
{{- $c := .Values.containerd -}}
{{- if ne $c.config "auto" }}{{ $_ := set $p "config" (dir $c.config) }}{{ end -}}
{{- if ne $c.socket "auto" }}{{ $_ := set $p "socket" (dir $c.socket) }}{{ end -}}
{{- if ne $c.binary "auto" }}{{ $_ := set $p "binary" (dir $c.binary) }}{{ end -}}
{{- toJson $p -}}
{{- end -}}

{{/* [name, host path, read-only, hostPath type] of every restricted mount. */}}
{{- define "kwasm-agent.restrictedMounts" -}}
{{- $p := include "kwasm-agent.flavorPaths" . | fromJson -}}
{{- $m := list
  (list "host-containerd-config" $p.config false "Directory")
  (list "host-install-dir" .Values.host.installDir false "DirectoryOrCreate")
  (list "host-containerd-socket" $p.socket true "Directory")
  (list "host-dbus" "/run/dbus" true "Directory")
  (list "host-usr" "/usr" true "Directory")
-}}
{{- if not (hasPrefix "/usr/" (printf "%s/" $p.binary)) }}
{{- $m = append $m (list "host-containerd-binary" $p.binary true "Directory") -}}
{{- end -}}
{{- with .Values.containerd.linkDir }}
{{- $m = append $m (list "host-link-dir" . false "Directory") -}}
{{- end -}}
{{- with .Values.artifacts.caBundle }}
{{- $m = append $m (list "host-ca-bundle" . true "File") -}}
{{- end -}}
{{- toJson $m -}}
{{- end -}}

{{/* The restart method the settings get: a restricted pod reaches systemd only over D-Bus. */}}
{{- define "kwasm-agent.restart" -}}
{{- $r := .Values.containerd.restart -}}
{{- if eq .Values.securityMode "restricted" -}}
{{- if kindIs "slice" $r -}}
{{- fail "securityMode restricted cannot run a restart command as the host (containerd.restart is an argv): use \"dbus\" (or \"systemd\", which restricted mode restarts over D-Bus) or \"none\"" -}}
{{- else if eq $r "systemd" -}}
"dbus"
{{- else -}}
{{ include "kwasm-agent.toml" $r }}
{{- end -}}
{{- else -}}
{{ include "kwasm-agent.toml" $r }}
{{- end -}}
{{- end -}}
