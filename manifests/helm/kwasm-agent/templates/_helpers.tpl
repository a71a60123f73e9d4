{{/* Names, labels and the image reference shared by every template. */}}

{{- define "kwasm-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kwasm-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "kwasm-agent.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "kwasm-agent.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kwasm-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kwasm-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kwasm-agent.labels" -}}
{{ include "kwasm-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kwasm
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "kwasm-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kwasm-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kwasm-agent.uninstallServiceAccountName" -}}
{{- printf "%s-uninstall" (include "kwasm-agent.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* repository@digest when a digest is given, else repository:tag (tag defaults to appVersion). */}}
{{- define "kwasm-agent.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
A value as TOML: strings, booleans, integers, floats, lists and maps (inline tables), recursively.
JSON string escapes are valid TOML basic-string escapes.
*/}}
{{- define "kwasm-agent.toml" -}}
{{- if kindIs "map" . -}}
{ {{- $first := true -}}
{{- range $k, $v := . -}}
{{- if not $first }}, {{ end -}}{{- $first = false -}}
{{- toJson $k }} = {{ include "kwasm-agent.toml" $v -}}
{{- end -}} }
{{- else if kindIs "slice" . -}}
[{{- range $i, $v := . -}}{{- if $i }}, {{ end -}}{{ include "kwasm-agent.toml" $v }}{{- end -}}]
{{- else if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) -}}
{{- . -}}
{{- else -}}
{{- fail (printf "cannot write %v (%s) as TOML" . (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{/* The common pod spec parts of the agent and the uninstall job. */}}
{{- define "kwasm-agent.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "kwasm-agent.proxyEnv" -}}
{{- with .Values.proxy.http }}
- { name: HTTP_PROXY, value: {{ . | quote }} }
{{- end }}
{{- with .Values.proxy.https }}
- { name: HTTPS_PROXY, value: {{ . | quote }} }
{{- end }}
{{- with .Values.proxy.noProxy }}
- { name: NO_PROXY, value: {{ . | quote }} }
{{- end }}
{{- end -}}

{{- define "kwasm-agent.catalogName" -}}
{{- printf "%s-catalog" (include "kwasm-agent.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
