{{/* Names and labels. */}}
{{- define "headbits.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "headbits.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Resource name of a component: (list root "component"). */}}
{{- define "headbits.componentName" -}}
{{- printf "%s-%s" (include "headbits.fullname" (index . 0)) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "headbits.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "headbits.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: headbits
{{- end }}

{{/* Selector labels of a component: (list root "component"). */}}
{{- define "headbits.selectorLabels" -}}
app.kubernetes.io/name: {{ include "headbits.name" (index . 0) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "headbits.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "headbits.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "headbits.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "headbits.modelsClaimName" -}}
{{- default (include "headbits.componentName" (list . "models")) .Values.models.persistence.existingClaim }}
{{- end }}

{{/*
Kafka settings as every headbits container sees them: the `kafka` values, the mounted TLS files,
and create_topics off when Strimzi owns the topics. Rendered as YAML, read back with fromYaml.
*/}}
{{- define "headbits.kafkaSettings" -}}
{{- $kafka := deepCopy .Values.kafka }}
{{- if .Values.strimzi.topics.enabled }}
{{- $_ := set $kafka "create_topics" false }}
{{- end }}
{{- with .Values.kafkaTls }}
{{- if .caSecret }}
{{- $_ := set $kafka "ssl_ca_location" (printf "/etc/headbits/kafka-tls/ca/%s" .caKey) }}
{{- end }}
{{- if .clientSecret }}
{{- $_ := set $kafka "ssl_certificate_location" (printf "/etc/headbits/kafka-tls/client/%s" .certificateKey) }}
{{- $_ := set $kafka "ssl_key_location" (printf "/etc/headbits/kafka-tls/client/%s" .keyKey) }}
{{- end }}
{{- end }}
{{- toYaml $kafka }}
{{- end }}

{{/* A setting's value as an environment string: lists comma-joined, whole floats as integers. */}}
{{- define "headbits.settingValue" -}}
{{- if kindIs "slice" . }}
{{- join "," . }}
{{- else if and (kindIs "float64" .) (eq (floor .) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
The Kafka topics a verb reads or writes, and whether it creates missing topics: each service's
settings class has exactly these topic settings (services/<stage>/service.py).
*/}}
{{- define "headbits.kafkaUse" -}}
{{- $uses := dict
  "collector" (dict "topics" (list "heads" "deadletter") "createsTopics" true)
  "featurizer" (dict "topics" (list "heads" "features" "deadletter") "createsTopics" true)
  "scorer" (dict "topics" (list "features" "alerts" "scores" "deadletter") "createsTopics" true)
  "trainer" (dict "topics" (list "features") "createsTopics" false) }}
{{- toYaml (index $uses .) }}
{{- end }}

{{/*
The env list of a headbits container: (dict "root" $ "settings" map "kafka" bool "verb" verb).
Each key is a settings field name and becomes HEADBITS_<NAME>; null values are left to the code's
default; string values are templates; settings in secretSettings come from their Secrets.
*/}}
{{- define "headbits.settingsEnv" -}}
{{- $root := .root }}
{{- $settings := deepCopy (default dict .settings) }}
{{- if .kafka }}
{{- $kafka := include "headbits.kafkaSettings" $root | fromYaml }}
{{- $uses := include "headbits.kafkaUse" .verb | fromYaml }}
{{- range $kind := list "heads" "features" "alerts" "scores" "deadletter" }}
{{- if not (has $kind $uses.topics) }}
{{- $_ := unset $kafka (printf "%s_topic" $kind) }}
{{- $_ := unset $kafka (printf "%s_retention_days" $kind) }}
{{- end }}
{{- end }}
{{- if not $uses.createsTopics }}
{{- range $name := list "create_topics" "topic_partitions" "topic_replication_factor" }}
{{- $_ := unset $kafka $name }}
{{- end }}
{{- end }}
{{- $settings = merge $settings $kafka }}
{{- end }}
{{- $secrets := $root.Values.secretSettings }}
{{- range $name := keys $secrets | sortAlpha }}
{{- $_ := unset $settings $name }}
{{- end }}
{{- range $name := keys $settings | sortAlpha }}
{{- $value := get $settings $name }}
{{- if not (kindIs "invalid" $value) }}
- name: HEADBITS_{{ upper $name }}
  value: {{ ternary (tpl (toString $value) $root) (include "headbits.settingValue" $value) (kindIs "string" $value) | quote }}
{{- end }}
{{- end }}
{{- if .kafka }}
{{- range $name := keys $secrets | sortAlpha }}
{{- $ref := get $secrets $name }}
- name: HEADBITS_{{ upper $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secretName }}
      key: {{ $ref.key }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes and mounts of the Kafka TLS Secrets, and the writable /tmp. */}}
{{- define "headbits.kafkaVolumes" -}}
- name: tmp
  emptyDir: {}
{{- with .Values.kafkaTls }}
{{- if .caSecret }}
- name: kafka-tls-ca
  secret:
    secretName: {{ .caSecret }}
{{- end }}
{{- if .clientSecret }}
- name: kafka-tls-client
  secret:
    secretName: {{ .clientSecret }}
{{- end }}
{{- end }}
{{- end }}

{{- define "headbits.kafkaVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- with .Values.kafkaTls }}
{{- if .caSecret }}
- name: kafka-tls-ca
  mountPath: /etc/headbits/kafka-tls/ca
  readOnly: true
{{- end }}
{{- if .clientSecret }}
- name: kafka-tls-client
  mountPath: /etc/headbits/kafka-tls/client
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* Scheduling fields shared by every pod: the component's values. */}}
{{- define "headbits.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The collector settings of one Zeek sensor: its name on every head and its WebSocket URL. */}}
{{- define "headbits.collectorSensor" -}}
source: websocket
sensor: {{ .name | quote }}
websocket_url: {{ .websocket_url | quote }}
{{- end }}
