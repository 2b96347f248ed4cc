{{/* Chart name, possibly overridden. */}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; also the StatefulSet's name, so pods are <fullname>-N. */}}
{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "switchboard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.headless" -}}
{{- printf "%s-headless" (include "switchboard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ include "switchboard.chart" . }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the cluster secret and the admin API token. */}}
{{- define "switchboard.secretName" -}}
{{- printf "%s-secrets" (include "switchboard.fullname" .) }}
{{- end }}

{{/* The stable DNS name of pod <fullname>-N through the headless Service. */}}
{{- define "switchboard.peerHost" -}}
{{- $ := index . 0 }}{{ $n := index . 1 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "switchboard.fullname" $) (int $n) (include "switchboard.headless" $) $.Release.Namespace $.Values.clusterDomain }}
{{- end }}

{{/* cluster.members: "N@<pod N's DNS name>:7100" for every replica; node id = pod ordinal. */}}
{{- define "switchboard.members" -}}
{{- $members := list }}
{{- $start := int .Values.ordinalStart }}
{{- range $i := until (int .Values.replicas) }}
{{- $n := add $start $i }}
{{- $members = append $members (printf "%d@%s:%d" (int $n) (include "switchboard.peerHost" (list $ $n)) (int $.Values.ports.nodelink)) }}
{{- end }}
{{- toJson $members }}
{{- end }}

{{- define "switchboard.validate" -}}
{{- if lt (int .Values.ordinalStart) 1 }}
{{- fail "ordinalStart must be at least 1: the pod ordinal is the node id, and node id 0 disables clustering" }}
{{- end }}
{{- if lt (int .Values.replicas) 1 }}
{{- fail "replicas must be at least 1" }}
{{- end }}
{{- if and .Values.cluster.secret (lt (len .Values.cluster.secret) 16) }}
{{- fail "cluster.secret must be at least 16 characters" }}
{{- end }}
{{- end }}
