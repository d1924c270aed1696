{{/* Chart name, truncated to a DNS label. */}}
{{- define "tidb-ebs-backup.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. It always contains the release name, so the cluster-scoped
ClusterRole and ClusterRoleBinding of two releases never clash.
*/}}
{{- define "tidb-ebs-backup.fullname" -}}
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

{{- define "tidb-ebs-backup.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tidb-ebs-backup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tidb-ebs-backup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tidb-ebs-backup.labels" -}}
helm.sh/chart: {{ include "tidb-ebs-backup.chart" . }}
{{ include "tidb-ebs-backup.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tidb-ebs-backup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tidb-ebs-backup.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tidb-ebs-backup.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{- define "tidb-ebs-backup.leaseName" -}}
{{- default (include "tidb-ebs-backup.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}
