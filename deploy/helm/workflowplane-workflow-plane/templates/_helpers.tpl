{{/* Names, labels, validation. The agent's command line lives in _commandline.tpl. */}}

{{- define "wpwp.namespace" -}}
{{- .Values.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "wpwp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wpwp.labels" -}}
helm.sh/chart: {{ include "wpwp.chart" . }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openchoreo
app.kubernetes.io/component: cluster-agent
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "wpwp.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cluster-agent
{{- end -}}

{{- define "wpwp.serviceAccountName" -}}
{{- .Values.clusterAgent.serviceAccount.name | default .Values.clusterAgent.name -}}
{{- end -}}

{{- define "wpwp.image" -}}
{{- $img := .Values.clusterAgent.image -}}
{{- printf "%s:%s" $img.repository ($img.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
The plane ID. clusterAgent.planeId (the WorkflowPlane reference page's name) and
clusterAgent.planeID (OpenChoreo's chart's name) are aliases: either may be set, both only to
the same value. No silent precedence, so a leftover value cannot redirect the agent.
*/}}
{{- define "wpwp.planeID" -}}
{{- $a := .Values.clusterAgent.planeId | default "" | toString -}}
{{- $b := .Values.clusterAgent.planeID | default "" | toString -}}
{{- if and $a $b (ne $a $b) -}}
{{- fail (printf "clusterAgent.planeId (%q) and clusterAgent.planeID (%q) are both set and differ: they are two names for the same setting (the reference docs' and OpenChoreo's); set one of them, to the WorkflowPlane CR's spec.planeID" $a $b) -}}
{{- end -}}
{{- if not (or $a $b) -}}
{{- fail "clusterAgent.planeId is required (OpenChoreo's name clusterAgent.planeID is accepted too): set it to the WorkflowPlane CR's spec.planeID (or the CR's name when it has no planeID), e.g. --set clusterAgent.planeId=default" -}}
{{- end -}}
{{- $a | default $b -}}
{{- end -}}

{{- define "wpwp.serverCAConfigMap" -}}
{{- printf "%s-server-ca" .Values.clusterAgent.name -}}
{{- end -}}

{{- define "wpwp.validate" -}}
{{- $_ := include "wpwp.planeID" . -}}
{{- if and .Values.clusterAgent.serverUrls .Values.clusterAgent.serverDnsName -}}
{{- fail "clusterAgent.serverUrls and clusterAgent.serverDnsName are both set: give the gateway replicas one way, a list of URLs or a name whose every address is a replica" -}}
{{- end -}}
{{- $ca := .Values.clusterAgent.tls.serverCA -}}
{{- if and $ca.value $ca.existingSecret.name -}}
{{- fail "clusterAgent.tls.serverCA: set value (inline PEM) or existingSecret.name, not both" -}}
{{- end -}}
{{- if and $ca.value (not (contains "-----BEGIN CERTIFICATE-----" $ca.value)) -}}
{{- fail "clusterAgent.tls.serverCA.value must be a PEM certificate (-----BEGIN CERTIFICATE-----...), e.g. --set-file clusterAgent.tls.serverCA.value=gateway-ca.crt" -}}
{{- end -}}
{{- end -}}
