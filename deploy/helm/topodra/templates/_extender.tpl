{{/* The extender container, shared by the DaemonSet (mode cluster) and the scheduler pod (mode own). */}}
{{- define "topodra.extenderContainer" -}}
{{- $e := .Values.extender -}}
- name: extender
  image: {{ include "topodra.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
  - extender
  # 0.0.0.0: kube-scheduler calls 127.0.0.1; probes and scrapers use the pod IP.
  - --listen=0.0.0.0
  - --port={{ $e.port }}
  - --tls-cert=/etc/topodra/tls/tls.crt
  - --tls-key=/etc/topodra/tls/tls.key
  {{- if $e.tls.clientAuth }}
  - --client-ca=/etc/topodra/client-ca/ca.crt
  {{- end }}
  - --config=/etc/topodra/config/config.yaml
  - --bind-hold-seconds={{ $e.bindHoldSeconds }}
  - --scheduler-name={{ if include "topodra.ownScheduler" . }}{{ .Values.scheduler.name }}{{ else }}default-scheduler{{ end }}
  # Active only beside the leader of the kube-scheduler it serves; the identity defaults to the host
  # name, which is kube-scheduler's too (same host network, or same pod).
  - --follow-lease={{ include "topodra.followLease" . }}
  - --log-level={{ $e.logLevel }}
  env:
  {{- with (include "topodra.apiEnv" .) }}{{ . | nindent 2 }}{{ end }}
  - {name: TMPDIR, value: /tmp}
  ports:
  - {name: https, containerPort: {{ $e.port }}}
  startupProbe:
    httpGet: {path: /healthz, port: https, scheme: HTTPS}
    periodSeconds: 2
    failureThreshold: 60
  livenessProbe:
    httpGet: {path: /healthz, port: https, scheme: HTTPS}
    periodSeconds: 10
    failureThreshold: 3
  # Not /readyz: it is 503 on every standby (not beside the scheduler's leader), so standbys would count
  # as unavailable: a DaemonSet or Deployment rollout would stall and the PDB would block every drain.
  # A standby is a healthy spare; /readyz stays for humans and monitoring (`kubectl get --raw`).
  readinessProbe:
    httpGet: {path: /healthz, port: https, scheme: HTTPS}
    periodSeconds: 5
  securityContext: {{- include "topodra.restrictedContainer" . | nindent 4 }}
  resources: {{- toYaml $e.resources | nindent 4 }}
  volumeMounts:
  - {name: tls, mountPath: /etc/topodra/tls, readOnly: true}
  {{- if $e.tls.clientAuth }}
  - {name: client-ca, mountPath: /etc/topodra/client-ca, readOnly: true}
  {{- end }}
  - {name: config, mountPath: /etc/topodra/config, readOnly: true}
  - {name: tmp, mountPath: /tmp}
{{- end -}}

{{- define "topodra.extenderVolumes" -}}
- name: tls
  secret: {secretName: {{ include "topodra.tlsSecret" . }}, items: [{key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]}
{{- if .Values.extender.tls.clientAuth }}
- name: client-ca
  secret: {secretName: {{ include "topodra.clientTlsSecret" . }}, items: [{key: ca.crt, path: ca.crt}]}
{{- end }}
- name: config
  configMap: {name: {{ include "topodra.extenderName" . }}-config}
- name: tmp
  emptyDir: {medium: Memory, sizeLimit: 16Mi}
{{- end -}}

{{/* What kube-scheduler needs beside its configuration: the CA and, with clientAuth, its certificate. */}}
{{- define "topodra.schedulerCertSources" -}}
- secret:
    name: {{ include "topodra.tlsSecret" . }}
    items: [{key: ca.crt, path: ca.crt}]
{{- if .Values.extender.tls.clientAuth }}
- secret:
    name: {{ include "topodra.clientTlsSecret" . }}
    items: [{key: tls.crt, path: client.crt}, {key: tls.key, path: client.key, mode: 0440}]
{{- end }}
{{- end -}}

{{/* Pod annotations that roll the pods when what they read at start changes. */}}
{{- define "topodra.extenderChecksums" -}}
checksum/config: {{ toYaml .Values.extender.config | sha256sum | trunc 16 }}
checksum/scheduler-config: {{ include "topodra.schedulerConfig" . | sha256sum | trunc 16 }}
{{- end -}}
