{{/* Names, labels and shared pod pieces. Container command lines live in _commandline.tpl. */}}

{{- define "wpcp.namespace" -}}
{{- .Values.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "wpcp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wpcp.labels" -}}
helm.sh/chart: {{ include "wpcp.chart" . }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openchoreo
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* On the Services whose ports serve /metrics: what the ServiceMonitor selects. */}}
{{- define "wpcp.metricsLabel" -}}
workflowplane.openchoreo.dev/metrics: "true"
{{- end -}}

{{/* Selector labels; call with (dict "root" $ "component" "gateway"). */}}
{{- define "wpcp.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "wpcp.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The gateway's pods: its own Deployment, or the combined one. */}}
{{- define "wpcp.gatewayComponent" -}}
{{- if eq .Values.mode "combined" }}control-plane{{ else }}gateway{{ end -}}
{{- end -}}

{{- define "wpcp.gateway.serviceAccountName" -}}
{{- .Values.clusterGateway.serviceAccount.name | default .Values.clusterGateway.name -}}
{{- end -}}
{{- define "wpcp.controller.serviceAccountName" -}}
{{- .Values.controller.serviceAccount.name | default .Values.controller.name -}}
{{- end -}}
{{- define "wpcp.combined.serviceAccountName" -}}
{{- .Values.combined.serviceAccount.name | default .Values.combined.name -}}
{{- end -}}

{{/* Host names the gateway serves: in-cluster Services (all forms: the headless one too,
which agents resolve to reach every replica and verify by its name) + localhost + extras. */}}
{{- define "wpcp.gateway.dnsNames" -}}
{{- $ns := include "wpcp.namespace" . -}}
{{- $names := list "localhost" -}}
{{- $services := list .Values.clusterGateway.name (printf "%s-peers" .Values.clusterGateway.name) -}}
{{- if .Values.clusterGateway.service.external.enabled -}}
{{- $services = append $services (printf "%s-external" .Values.clusterGateway.name) -}}
{{- end -}}
{{- range $services -}}
{{- $names = concat $names (list . (printf "%s.%s" . $ns) (printf "%s.%s.svc" . $ns) (printf "%s.%s.svc.cluster.local" . $ns)) -}}
{{- end -}}
{{- concat $names .Values.clusterGateway.tls.dnsNames | uniq | toJson -}}
{{- end -}}

{{- define "wpcp.gateway.internalURL" -}}
{{- printf "https://%s.%s.svc:%d" .Values.clusterGateway.name (include "wpcp.namespace" .) (int .Values.clusterGateway.ports.internal) -}}
{{- end -}}

{{/* Cross-value checks the schema cannot express; each fails with what to do. */}}
{{- define "wpcp.validate" -}}
{{- $tls := .Values.clusterGateway.tls -}}
{{- if and $tls.existingSecret (not $tls.internalCAExistingSecret) -}}
{{- fail "clusterGateway.tls.existingSecret is set but clusterGateway.tls.internalCAExistingSecret is not: bring both (server certificate and internal CA), or neither to let the gateway create them" -}}
{{- end -}}
{{- if and $tls.internalCAExistingSecret (not $tls.existingSecret) -}}
{{- fail "clusterGateway.tls.internalCAExistingSecret is set but clusterGateway.tls.existingSecret is not: bring both (server certificate and internal CA), or neither to let the gateway create them" -}}
{{- end -}}
{{- if and $tls.existingSecret (eq .Values.mode "separate") (not .Values.controller.gatewayClient.existingSecret) -}}
{{- fail "clusterGateway.tls.existingSecret is set, so the gateway creates no client certificate for the controller: set controller.gatewayClient.existingSecret (ca.crt, tls.crt, tls.key)" -}}
{{- end -}}
{{- $external := .Values.clusterGateway.service.external -}}
{{- if and $external.nodePort (ne $external.type "NodePort") (ne $external.type "LoadBalancer") -}}
{{- fail (printf "clusterGateway.service.external.nodePort is set but the type is %s (NodePort or LoadBalancer only)" $external.type) -}}
{{- end -}}
{{- end -}}

{{/* A PodDisruptionBudget; call with (dict "root" $ "name" ... "component" ... "pdb" ...). */}}
{{- define "wpcp.pdb" -}}
{{- if .pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ include "wpcp.namespace" .root }}
  labels:
    {{- include "wpcp.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if ne (toString .pdb.minAvailable) "" }}
  minAvailable: {{ .pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "wpcp.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
{{- end }}
{{- end -}}

{{/*
The pod spec shared by every Deployment. Call with (dict "root" $ "component" ... "pod" <values
block> "serviceAccountName" ... "containers" <rendered containers YAML> "volumes" <YAML>).
*/}}
{{- define "wpcp.podTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "wpcp.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  {{- with .pod.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ .serviceAccountName }}
  automountServiceAccountToken: true
  enableServiceLinks: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .pod.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with .pod.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .pod.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .pod.affinity }}
  affinity:
    {{- toYaml .pod.affinity | nindent 4 }}
  {{- else if gt (int .pod.replicas) 1 }}
  affinity:
    # Replicas on different nodes when possible (set affinity to replace this).
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "wpcp.selectorLabels" (dict "root" $root "component" .component) | nindent 14 }}
  {{- end }}
  {{- with .terminationGracePeriodSeconds }}
  terminationGracePeriodSeconds: {{ . }}
  {{- end }}
  {{- with .pod.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    {{- .containers | nindent 4 }}
  volumes:
  # Writable scratch space on a read-only root filesystem (certificates are handed to
  # OpenSSL as temporary files).
  - name: tmp
    emptyDir:
      medium: Memory
      sizeLimit: 16Mi
  {{- with .volumes }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end -}}
