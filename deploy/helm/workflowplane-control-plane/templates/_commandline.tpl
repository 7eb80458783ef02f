{{/*
=============================================================================================
THE ONE PLACE where this chart spells the components' command lines: `wpctl` subcommands,
flags, environment variables, file paths and ports. Align these with the CLI
(src/workflowplane/{gateway,controller}/cli.py, cli/control_plane.py) when it changes; the
Helm tests parse the rendered args with the real `wpctl` argument parser.
=============================================================================================
*/}}

{{- define "wpcp.cmd.gatewayTLSDir" -}}/etc/workflowplane/gateway-tls{{- end -}}
{{- define "wpcp.cmd.internalCADir" -}}/etc/workflowplane/gateway-internal-ca{{- end -}}
{{- define "wpcp.cmd.gatewayClientDir" -}}/etc/workflowplane/gateway-client{{- end -}}

{{/* Global flags (before the subcommand). */}}
{{- define "wpcp.cmd.globalArgs" -}}
{{- if .Values.debug -}}
- -v
{{ end -}}
{{- if ne .Values.logFormat "text" -}}
- --log-format={{ .Values.logFormat }}
{{ end -}}
{{- end -}}

{{/* `wpctl gateway` flags (also accepted by `wpctl control-plane`). */}}
{{- define "wpcp.cmd.gatewayFlags" -}}
{{- $gw := .Values.clusterGateway -}}
- --namespace={{ include "wpcp.namespace" . }}
- --host=0.0.0.0
- --public-port={{ $gw.ports.public }}
- --internal-port={{ $gw.ports.internal }}
- --health-port={{ $gw.ports.health }}
{{- range (include "wpcp.gateway.dnsNames" . | fromJsonArray) }}
- --server-dns-name={{ . }}
{{- end }}
{{- if $gw.tls.existingSecret }}
- --tls-cert={{ include "wpcp.cmd.gatewayTLSDir" . }}/tls.crt
- --tls-key={{ include "wpcp.cmd.gatewayTLSDir" . }}/tls.key
- --internal-ca={{ include "wpcp.cmd.internalCADir" . }}/ca.crt
{{- end }}
{{- if lt (float64 $gw.deadAfterSeconds) (float64 $gw.pingIntervalSeconds) }}
{{- fail (printf "clusterGateway.deadAfterSeconds (%v) is shorter than clusterGateway.pingIntervalSeconds (%v): every agent would be taken for dead between pings" $gw.deadAfterSeconds $gw.pingIntervalSeconds) }}
{{- end }}
- --ping-interval={{ $gw.pingIntervalSeconds }}
- --dead-after={{ $gw.deadAfterSeconds }}
- --request-timeout={{ $gw.requestTimeoutSeconds }}
- --max-body-bytes={{ int64 $gw.maxBodyBytes }}
- --drain-seconds={{ $gw.drainSeconds }}
{{- end -}}

{{/* Controller flags shared by `wpctl controller` and `wpctl control-plane`. */}}
{{- define "wpcp.cmd.controllerFlags" -}}
- --resync-seconds={{ .Values.controller.resyncSeconds }}
- --stuck-after={{ .Values.controller.health.stuckAfterSeconds }}
- --gateway-leases
{{- if .Values.controller.peering.enabled }}
- --peering={{ .Values.controller.peering.name }}
{{- end }}
{{- end -}}

{{- define "wpcp.cmd.gatewayArgs" -}}
{{- include "wpcp.cmd.globalArgs" . -}}
- gateway
{{ include "wpcp.cmd.gatewayFlags" . }}
{{- with .Values.clusterGateway.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "wpcp.cmd.controllerArgs" -}}
{{- include "wpcp.cmd.globalArgs" . -}}
- controller
- --gateway-url={{ include "wpcp.gateway.internalURL" . }}
- --gateway-namespace={{ include "wpcp.namespace" . }}
{{- if .Values.controller.gatewayClient.existingSecret }}
- --gateway-ca={{ include "wpcp.cmd.gatewayClientDir" . }}/ca.crt
- --gateway-cert={{ include "wpcp.cmd.gatewayClientDir" . }}/tls.crt
- --gateway-key={{ include "wpcp.cmd.gatewayClientDir" . }}/tls.key
{{- end }}
{{ include "wpcp.cmd.controllerFlags" . }}
- --health-port={{ .Values.controller.health.port }}
{{- with .Values.controller.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "wpcp.cmd.combinedArgs" -}}
{{- include "wpcp.cmd.globalArgs" . -}}
- control-plane
{{ include "wpcp.cmd.gatewayFlags" . }}
{{ include "wpcp.cmd.controllerFlags" . }}
- --controller-health-port={{ .Values.controller.health.port }}
{{- with .Values.combined.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Environment for every container; call with (dict "root" $ "extra" <extraEnv list>). */}}
{{- define "wpcp.cmd.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: PYTHONUNBUFFERED
  value: "1"
- name: TMPDIR
  value: /tmp
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Whether a combined pod is probed at the controller's listener (`ctrl-health`), which also
carries the gateway's own /healthz and /readyz; else at the gateway's (`health`).
*/}}
{{- define "wpcp.cmd.combinedControllerHealth" -}}
{{- if and (eq .Values.mode "combined") .Values.controller.health.enabled }}true{{ end -}}
{{- end -}}

{{/* Container ports and probes of the gateway's listeners (+ the controller's, combined). */}}
{{- define "wpcp.cmd.gatewayPorts" -}}
ports:
- name: websocket
  containerPort: {{ .Values.clusterGateway.ports.public }}
  protocol: TCP
- name: internal-api
  containerPort: {{ .Values.clusterGateway.ports.internal }}
  protocol: TCP
- name: health
  containerPort: {{ .Values.clusterGateway.ports.health }}
  protocol: TCP
{{- if include "wpcp.cmd.combinedControllerHealth" . }}
- name: ctrl-health
  containerPort: {{ .Values.controller.health.port }}
  protocol: TCP
{{ include "wpcp.cmd.probes" "ctrl-health" }}
{{- else }}
{{ include "wpcp.cmd.probes" "health" }}
{{- end }}
{{- end -}}

{{/* Probes against a named HTTP port that serves /healthz and /readyz. */}}
{{- define "wpcp.cmd.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ . }}}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: {{ . }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ . }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}
