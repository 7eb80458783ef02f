{{/*
=============================================================================================
THE ONE PLACE where this chart spells the agent's command line: the `wpctl agent` flags, the
environment and the file paths. Align with src/workflowplane/agent/command.py when it changes (every
flag there also reads CLUSTER_AGENT_<FLAG>); the Helm tests parse the rendered args with the
real `wpctl` argument parser.
=============================================================================================
*/}}

{{- define "wpwp.cmd.serverCADir" -}}/etc/workflowplane/server-ca{{- end -}}

{{- define "wpwp.cmd.args" -}}
{{- $a := .Values.clusterAgent -}}
{{- if eq $a.logLevel "debug" -}}
- -v
{{ end -}}
{{- if ne $a.logFormat "text" -}}
- --log-format={{ $a.logFormat }}
{{ end -}}
- agent
{{- if $a.serverDnsName }}
- --server-dns-name={{ $a.serverDnsName }}
- --server-resolve-seconds={{ $a.serverResolveSeconds }}
{{- else if $a.serverUrls }}
- --server-urls={{ join "," $a.serverUrls }}
{{- else }}
- --server-url={{ $a.serverUrl }}
{{- end }}
- --plane-type={{ $a.planeType }}
- --plane-id={{ include "wpwp.planeID" . }}
- --namespace={{ include "wpwp.namespace" . }}
- --secret-name={{ $a.tls.secretName }}
- --health-port={{ $a.health.port }}
{{- if or $a.tls.serverCA.value $a.tls.serverCA.existingSecret.name }}
- --server-ca={{ include "wpwp.cmd.serverCADir" . }}/ca.crt
{{- end }}
{{- if gt (float64 $a.reconnect.initialSeconds) (float64 $a.reconnect.maxSeconds) }}
{{- fail (printf "clusterAgent.reconnect.initialSeconds (%v) is longer than clusterAgent.reconnect.maxSeconds (%v)" $a.reconnect.initialSeconds $a.reconnect.maxSeconds) }}
{{- end }}
- --reconnect-initial={{ $a.reconnect.initialSeconds }}
- --reconnect-max={{ $a.reconnect.maxSeconds }}
- --request-timeout={{ $a.requestTimeoutSeconds }}
- --max-concurrent-requests={{ int64 $a.maxConcurrentRequests }}
- --max-concurrent-streams={{ int64 $a.maxConcurrentStreams }}
- --max-frame-bytes={{ int64 $a.maxFrameBytes }}
- --cert-validity-days={{ $a.certValidityDays }}
{{- with $a.allowedNamespaces }}
- --allowed-namespaces={{ join "," . }}
{{- end }}
- --consent-configmap={{ $a.consentConfigMap }}
{{- with $a.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "wpwp.cmd.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: PYTHONUNBUFFERED
  value: "1"
- name: TMPDIR
  value: /tmp
{{- with .Values.clusterAgent.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The health listener's container port and, when enabled, the probes against it. */}}
{{- define "wpwp.cmd.health" -}}
{{- $h := .Values.clusterAgent.health -}}
ports:
- name: health
  containerPort: {{ $h.port }}
  protocol: TCP
{{- if $h.enabled }}
startupProbe:
  httpGet: {path: /healthz, port: health}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: health}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: health}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}
{{- end -}}
