{{- define "topodra.fullname" -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- define "topodra.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "topodra.labels" -}}
app.kubernetes.io/name: topodra
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "topodra.extenderHost" -}}{{ include "topodra.fullname" . }}-extender.{{ .Release.Namespace }}.svc{{- end -}}
