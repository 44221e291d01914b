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
  {{- if not (include "topodra.ownScheduler" .) }}
  # The cluster's kube-scheduler schedules this pod's own replacement through this extender: the old
  # process serves until the new one is synced and waiting, then hands the port over (no deadlock).
  - --handover-dir=/var/run/topodra-handover
  - --handover-grace={{ $e.handoverGraceSeconds }}
  {{- end }}
  - --log-level={{ $e.logLevel }}
  env:
  {{- with (include "topodra.apiEnv" .) }}{{ . | nindent 2 }}{{ end }}
  - {name: TMPDIR, value: /tmp}
  {{- if include "topodra.ownScheduler" . }}
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
  # as unavailable: a rollout would stall and the PDB would block every drain. A standby is a healthy
  # spare; /readyz stays for humans and monitoring (`kubectl get --raw`).
  readinessProbe:
    httpGet: {path: /healthz, port: https, scheme: HTTPS}
    periodSeconds: 5
  {{- else }}
  # Mode cluster, host network: no ports list (a hostNetwork port is a host port, and the surge pod of a
  # rolling update must fit beside the old one on the same node). A successor waiting for the handover
  # is healthy and ready (the rollout then stops the old pod, which hands the port over); otherwise the
  # port must accept connections.
  startupProbe:
    exec: {command: [python3, -c, {{ include "topodra.handoverProbe" . | quote }}]}
    periodSeconds: 2
    failureThreshold: 90
  livenessProbe:
    exec: {command: [python3, -c, {{ include "topodra.handoverProbe" . | quote }}]}
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    exec: {command: [python3, -c, {{ include "topodra.handoverProbe" . | quote }}]}
    periodSeconds: 5
  {{- end }}
  securityContext: {{- include "topodra.restrictedContainer" . | nindent 4 }}
  resources: {{- toYaml $e.resources | nindent 4 }}
  volumeMounts:
  - {name: tls, mountPath: /etc/topodra/tls, readOnly: true}
  {{- if $e.tls.clientAuth }}
  - {name: client-ca, mountPath: /etc/topodra/client-ca, readOnly: true}
  {{- end }}
  - {name: config, mountPath: /etc/topodra/config, readOnly: true}
  - {name: tmp, mountPath: /tmp}
  {{- if not (include "topodra.ownScheduler" .) }}
  - {name: handover, mountPath: /var/run/topodra-handover}
  {{- end }}
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


{{/* Mode cluster probe: a waiting handover successor, or the extender's port accepting connections. */}}
{{- define "topodra.handoverProbe" -}}
import socket, sys; w = open("/var/run/topodra-handover/successor").read().strip() if __import__("os").path.exists("/var/run/topodra-handover/successor") else ""; sys.exit(0) if w else socket.create_connection(("127.0.0.1", {{ .Values.extender.port }}), 2).close()
{{- end -}}
