{{/* Containers and volumes of the Deployments (command lines: _commandline.tpl). */}}

{{/* A container serving the gateway's listeners (gateway alone, or combined). */}}
{{- define "wpcp.gatewayContainer" -}}
{{- $root := .root -}}
- name: {{ .name }}
  image: {{ include "wpcp.image" $root | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args:
    {{- .args | nindent 4 }}
  env:
    {{- include "wpcp.cmd.env" (dict "root" $root "extra" .env) | nindent 4 }}
  {{- include "wpcp.cmd.gatewayPorts" $root | nindent 2 }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- if $root.Values.clusterGateway.tls.existingSecret }}
  - name: gateway-tls
    mountPath: {{ include "wpcp.cmd.gatewayTLSDir" $root }}
    readOnly: true
  - name: gateway-internal-ca
    mountPath: {{ include "wpcp.cmd.internalCADir" $root }}
    readOnly: true
  {{- end }}
{{- end -}}

{{- define "wpcp.gatewayVolumes" -}}
{{- if .Values.clusterGateway.tls.existingSecret -}}
- name: gateway-tls
  secret:
    secretName: {{ .Values.clusterGateway.tls.existingSecret }}
    items: [{key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]
- name: gateway-internal-ca
  secret:
    secretName: {{ .Values.clusterGateway.tls.internalCAExistingSecret }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end -}}
{{- end -}}

{{- define "wpcp.controllerContainer" -}}
{{- $c := .Values.controller -}}
- name: controller
  image: {{ include "wpcp.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    {{- include "wpcp.cmd.controllerArgs" . | nindent 4 }}
  env:
    {{- include "wpcp.cmd.env" (dict "root" . "extra" $c.extraEnv) | nindent 4 }}
  {{- if $c.health.enabled }}
  ports:
  - name: health
    containerPort: {{ $c.health.port }}
    protocol: TCP
  {{- include "wpcp.cmd.probes" "health" | nindent 2 }}
  {{- end }}
  resources:
    {{- toYaml $c.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- if $c.gatewayClient.existingSecret }}
  - name: gateway-client
    mountPath: {{ include "wpcp.cmd.gatewayClientDir" . }}
    readOnly: true
  {{- end }}
{{- end -}}

{{- define "wpcp.controllerVolumes" -}}
{{- with .Values.controller.gatewayClient.existingSecret -}}
- name: gateway-client
  secret:
    secretName: {{ . }}
    items: [{key: ca.crt, path: ca.crt}, {key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]
{{- end -}}
{{- end -}}
