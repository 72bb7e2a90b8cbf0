{{/* Prefix of the chart's object names: the release name, with "rivulet" added if missing. */}}
{{- define "rivulet.fullname" -}}
{{- if contains "rivulet" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-rivulet" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rivulet.labels" -}}
app.kubernetes.io/name: rivulet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "rivulet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Where brokers, sinks and webhook sources are reached. */}}
{{- define "rivulet.ingressUrl" -}}
http://{{ .Values.dataPlane.service.name }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}

{{- define "rivulet.rabbitmqSecret" -}}
{{- .Values.rabbitmq.existingSecret | default "rabbitmq-broker-config" -}}
{{- end -}}

{{- define "rivulet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "rivulet.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "rivulet.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
{{- end -}}
