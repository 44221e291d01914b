{{/* Names. fullnameOverride wins; else the release name, with nameOverride (or "topodra") appended
unless the release name already contains it. Truncated so that "<fullname>-extender-client-tls" still
fits the 63 characters of a label value. */}}
{{- define "topodra.name" -}}{{ .Values.nameOverride | default "topodra" | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- define "topodra.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "topodra.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "topodra.selectorLabels" -}}
app.kubernetes.io/name: {{ include "topodra.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "topodra.labels" -}}
{{ include "topodra.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* repository@digest when a digest is given (immutable), else repository:tag (tag defaults to appVersion). */}}
{{- define "topodra.imageRef" -}}
{{- if .digest -}}{{ .repository }}@{{ .digest }}{{- else -}}{{ .repository }}:{{ .tag | default .default }}{{- end -}}
{{- end -}}
{{- define "topodra.image" -}}
{{- include "topodra.imageRef" (dict "repository" .Values.image.repository "digest" .Values.image.digest "tag" .Values.image.tag "default" .Chart.AppVersion) -}}
{{- end -}}
{{- define "topodra.schedulerImage" -}}
{{- $i := .Values.scheduler.image -}}
{{- include "topodra.imageRef" (dict "repository" $i.repository "digest" $i.digest "tag" $i.tag "default" "") -}}
{{- end -}}

{{- define "topodra.imagePullSecrets" -}}
imagePullSecrets:
{{- range .Values.imagePullSecrets }}
- name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
{{- end }}
{{- end -}}

{{/* Service account names: the created one, or the one named in values. */}}
{{- define "topodra.driverServiceAccount" -}}
{{- if .Values.driver.serviceAccount.create -}}{{ .Values.driver.serviceAccount.name | default (printf "%s-driver" (include "topodra.fullname" .)) }}
{{- else -}}{{ required "driver.serviceAccount.name is required when driver.serviceAccount.create is false" .Values.driver.serviceAccount.name }}{{- end -}}
{{- end -}}
{{- define "topodra.extenderServiceAccount" -}}
{{- if .Values.extender.serviceAccount.create -}}{{ .Values.extender.serviceAccount.name | default (printf "%s-extender" (include "topodra.fullname" .)) }}
{{- else -}}{{ required "extender.serviceAccount.name is required when extender.serviceAccount.create is false" .Values.extender.serviceAccount.name }}{{- end -}}
{{- end -}}
{{- define "topodra.schedulerServiceAccount" -}}
{{- if .Values.scheduler.serviceAccount.create -}}{{ .Values.scheduler.serviceAccount.name | default (printf "%s-scheduler" (include "topodra.fullname" .)) }}
{{- else -}}{{ required "scheduler.serviceAccount.name is required when scheduler.serviceAccount.create is false" .Values.scheduler.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* Scheduler side. "cluster": the cluster's own kube-scheduler calls an extender DaemonSet on the
control-plane nodes. "own": the chart runs a kube-scheduler Deployment with the extender as a sidecar. */}}
{{- define "topodra.ownScheduler" -}}{{ if eq .Values.scheduler.mode "own" }}true{{ end }}{{- end -}}
{{- define "topodra.extenderName" -}}{{ include "topodra.fullname" . }}-extender{{- end -}}
{{- define "topodra.schedulerFullname" -}}{{ include "topodra.fullname" . }}-scheduler{{- end -}}
{{- define "topodra.schedulerLease" -}}{{ .Values.scheduler.leaseName | default (include "topodra.schedulerFullname" .) }}{{- end -}}
{{/* The Lease held by the kube-scheduler this extender serves; its replica beside the leader is active. */}}
{{- define "topodra.followLease" -}}
{{- if .Values.extender.followLease -}}{{ .Values.extender.followLease }}
{{- else if include "topodra.ownScheduler" . -}}{{ .Release.Namespace }}/{{ include "topodra.schedulerLease" . }}
{{- else -}}kube-system/kube-scheduler{{- end -}}
{{- end -}}

{{/* TLS Secret names. */}}
{{- define "topodra.tlsSecret" -}}
{{- if eq .Values.extender.tls.source "secret" -}}{{ required "extender.tls.secretName is required with extender.tls.source=secret" .Values.extender.tls.secretName }}
{{- else -}}{{ include "topodra.extenderName" . }}-tls{{- end -}}
{{- end -}}
{{- define "topodra.clientTlsSecret" -}}
{{- if eq .Values.extender.tls.source "secret" -}}{{ required "extender.tls.clientSecretName is required with extender.tls.source=secret and extender.tls.clientAuth=true" .Values.extender.tls.clientSecretName }}
{{- else -}}{{ include "topodra.extenderName" . }}-client-tls{{- end -}}
{{- end -}}

{{/* Where kube-scheduler finds the extender's CA and its client certificate. */}}
{{- define "topodra.schedulerCertDir" -}}
{{- if include "topodra.ownScheduler" . -}}/etc/topodra/scheduler{{- else -}}{{ .Values.scheduler.configDir }}{{- end -}}
{{- end -}}

{{/* The KubeSchedulerConfiguration that calls the extender (the same shape as
`topodra extender print-scheduler-config`). */}}
{{- define "topodra.schedulerConfig" -}}
{{- $dir := include "topodra.schedulerCertDir" . -}}
{{- $e := .Values.extender -}}
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: {{ if include "topodra.ownScheduler" . }}""{{ else }}{{ .Values.scheduler.kubeconfig | quote }}{{ end }}
{{- if include "topodra.ownScheduler" . }}
leaderElection:
  leaderElect: true
  resourceLock: leases
  resourceNamespace: {{ .Release.Namespace }}
  resourceName: {{ include "topodra.schedulerLease" . }}
profiles:
- schedulerName: {{ .Values.scheduler.name }}
{{- else }}
profiles:
- schedulerName: default-scheduler
{{- end }}
extenders:
- urlPrefix: https://127.0.0.1:{{ $e.port }}/v1
  filterVerb: filter
  prioritizeVerb: prioritize
  weight: {{ $e.weight }}
  enableHTTPS: true
  tlsConfig:
    serverName: 127.0.0.1
    caFile: {{ $dir }}/ca.crt
    {{- if $e.tls.clientAuth }}
    certFile: {{ $dir }}/client.crt
    keyFile: {{ $dir }}/client.key
    {{- end }}
  {{- if $e.gangBind }}
  bindVerb: bind
  httpTimeout: {{ $e.httpTimeout | default "30s" }}
  {{- else }}
  httpTimeout: {{ $e.httpTimeout | default "2s" }}
  {{- end }}
  nodeCacheCapable: true
  {{- if $e.optInResource }}
  # Only pods that request this extended resource are sent to the extender (filter, prioritize, bind);
  # kube-scheduler does not count it, and the kubelet admits pods whose node does not advertise it.
  managedResources:
  - {name: {{ $e.optInResource | quote }}, ignoredByScheduler: true}
  {{- else }}
  managedResources: []
  {{- end }}
  ignorable: {{ $e.ignorable }}
{{- end -}}

{{/* KUBERNETES_SERVICE_HOST/PORT for clusters where the kubernetes Service is not routable from pods. */}}
{{- define "topodra.apiEnv" -}}
{{- $env := list -}}
{{- with .Values.kubernetesApi.host }}{{ $env = append $env (dict "name" "KUBERNETES_SERVICE_HOST" "value" (toString .)) }}{{ end -}}
{{- with .Values.kubernetesApi.port }}{{ $env = append $env (dict "name" "KUBERNETES_SERVICE_PORT" "value" (toString .)) }}{{ end -}}
{{- range $i, $e := $env }}{{ if $i }}{{ "\n" }}{{ end }}- {name: {{ $e.name }}, value: {{ $e.value | quote }}}{{ end -}}
{{- end -}}

{{/* Restricted container security context (non-root, read-only root, no capabilities). */}}
{{- define "topodra.restrictedContainer" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* Checks that the schema cannot express. */}}
{{- define "topodra.validate" -}}
{{- $e := .Values.extender -}}
{{- if and $e.enabled $e.gangBind $e.ignorable -}}
{{- fail "extender.gangBind and extender.ignorable do not go together: with ignorable a held or failed bind falls through to the default binder, which binds the pod anyway (set extender.gangBind=false to fail open)" -}}
{{- end -}}
{{- if and (include "topodra.ownScheduler" .) (not .Values.extender.enabled) -}}
{{- fail "scheduler.mode=own runs the extender as a sidecar of the chart's kube-scheduler: it needs extender.enabled=true" -}}
{{- end -}}
{{- if and (include "topodra.ownScheduler" .) (not .Values.scheduler.image.repository) -}}
{{- fail "scheduler.mode=own needs scheduler.image.repository (a kube-scheduler image matching your cluster's version)" -}}
{{- end -}}
{{- if and (include "topodra.ownScheduler" .) (not (or .Values.scheduler.image.tag .Values.scheduler.image.digest)) -}}
{{- fail "scheduler.mode=own needs scheduler.image.tag or scheduler.image.digest (a kube-scheduler matching your cluster's version)" -}}
{{- end -}}
{{- if and (eq .Values.driver.backend "file") (not .Values.driver.topologyFile) .Values.driver.enabled -}}
{{- fail "driver.backend=file needs driver.topologyFile (mount the file with driver.extraVolumes/extraVolumeMounts)" -}}
{{- end -}}
{{- if and .Values.driver.fakeDeviceNodes (not .Values.driver.devRoot) -}}
{{- fail "driver.fakeDeviceNodes creates stand-in device nodes under driver.devRoot: set driver.devRoot too (never the node's real /dev)" -}}
{{- end -}}
{{- if and (include "topodra.ownScheduler" .) .Values.scheduler.hostNetwork (eq (int .Values.scheduler.port) 10259) -}}
{{- fail "scheduler.hostNetwork=true with scheduler.port=10259 collides with the cluster's own kube-scheduler on control-plane nodes: choose another scheduler.port (e.g. 10269)" -}}
{{- end -}}
{{- if and (eq $e.tls.source "certManager") (not (.Capabilities.APIVersions.Has "cert-manager.io/v1")) (not $e.tls.certManager.skipCheck) -}}
{{- fail "extender.tls.source=certManager needs cert-manager (API cert-manager.io/v1 is not served); install cert-manager first, or set extender.tls.certManager.skipCheck=true when rendering offline" -}}
{{- end -}}
{{- end -}}
