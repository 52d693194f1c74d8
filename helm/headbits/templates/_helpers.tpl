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

{{/*
A name or label value of at most `max` characters: (list "name" max). A longer one keeps its
start and ends in 8 hex digits of its hash, so two long names that share a start stay distinct.
*/}}
{{- define "headbits.shortName" -}}
{{- $name := index . 0 }}
{{- $max := int (index . 1) }}
{{- if le (len $name) $max }}
{{- $name }}
{{- else }}
{{- printf "%s-%s" (trunc (int (sub $max 9)) $name | trimSuffix "-") (sha256sum $name | trunc 8) }}
{{- end }}
{{- end }}

{{/* Resource name of a component (at most 63 characters): (list root "component"). */}}
{{- define "headbits.componentName" -}}
{{- include "headbits.shortName" (list (printf "%s-%s" (include "headbits.fullname" (index . 0)) (index . 1)) 63) }}
{{- end }}

{{/* The trainer CronJob: its name leaves 11 characters for its Jobs' suffix, at most 52. */}}
{{- define "headbits.trainerName" -}}
{{- include "headbits.shortName" (list (printf "%s-trainer" (include "headbits.fullname" .)) 52) }}
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

{{/* The image of a headbits service (a Dockerfile target): (list root "service"). */}}
{{- define "headbits.image" -}}
{{- $root := index . 0 }}
{{- $service := index . 1 }}
{{- $image := $root.Values.image }}
{{- with get $image.digests $service }}
{{- printf "%s-%s@%s" $image.repository $service . }}
{{- else }}
{{- printf "%s-%s:%s" $image.repository $service (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* CPU cores of a Kubernetes quantity ("500m", "2"), rounded up, at least 1. */}}
{{- define "headbits.cpuCores" -}}
{{- $cpu := toString . }}
{{- if hasSuffix "m" $cpu }}
{{- max 1 (div (add (trimSuffix "m" $cpu | int) 999) 1000) }}
{{- else }}
{{- max 1 (ceil (float64 $cpu) | int) }}
{{- end }}
{{- end }}

{{/* TF Serving's TensorFlow threads: tfserving.threads, or its CPU request rounded up. */}}
{{- define "headbits.tfservingThreads" -}}
{{- $t := .Values.tfserving }}
{{- if $t.threads }}
{{- $t.threads }}
{{- else }}
{{- include "headbits.cpuCores" (dig "requests" "cpu" "1" $t.resources) }}
{{- end }}
{{- end }}

{{/* The model's base_path as TF Serving reads it: on the volume, or in the object store. */}}
{{- define "headbits.modelBasePath" -}}
{{- if eq .Values.models.storage "objectStore" }}
{{- printf "%s/%s" .Values.models.objectStore.basePath .Values.tfserving.modelName }}
{{- else }}
{{- printf "%s/%s" .Values.models.mountPath .Values.tfserving.modelName }}
{{- end }}
{{- end }}

{{/* Where training runs write their TensorBoard event files: a folder of the models volume. */}}
{{- define "headbits.tensorboardDir" -}}
{{- printf "%s/%s" .Values.models.mountPath .Values.trainer.tensorboard.subPath }}
{{- end }}

{{/*
The `headbits model` settings of the trainer and the rollout Job: the repository (the models
volume, or the object store's base path), TF Serving's model name and base path, and the server to
wait on during a promotion.
*/}}
{{- define "headbits.modelSettings" -}}
{{- if eq .Values.models.storage "objectStore" }}
model_store: {{ .Values.models.objectStore.basePath | quote }}
{{- else }}
models_dir: {{ .Values.models.mountPath | quote }}
{{- end }}
config_file: {{ printf "%s/%s" .Values.models.mountPath .Values.tfserving.modelConfigFile | quote }}
model_name: {{ .Values.tfserving.modelName | quote }}
serving_base_path: {{ include "headbits.modelBasePath" . | quote }}
{{- if .Values.tfserving.enabled }}
server: {{ printf "%s:%d" (include "headbits.componentName" (list . "tfserving")) (int .Values.tfserving.grpcPort) | quote }}
{{- end }}
{{- end }}

{{/*
Keys of the kafka `<key>_topic` settings that the enabled services write: the KafkaTopics to
create. The scorer writes scores with write_scores or a shadow label.
*/}}
{{- define "headbits.writtenTopics" -}}
{{- $topics := list "deadletter" }}
{{- if .Values.collector.enabled }}{{ $topics = append $topics "heads" }}{{ end }}
{{- if .Values.featurizer.enabled }}{{ $topics = append $topics "features" }}{{ end }}
{{- if .Values.scorer.enabled }}
{{- $topics = append $topics "alerts" }}
{{- $scorer := .Values.scorer.settings }}
{{- if or (eq (toString (default false $scorer.write_scores)) "true") $scorer.shadow_label }}
{{- $topics = append $topics "scores" }}
{{- end }}
{{- if ne (toString (dig "write_drift" true $scorer)) "false" }}
{{- $topics = append $topics "drift" }}
{{- end }}
{{- end }}
{{- toJson (dict "topics" $topics) }}
{{- end }}

{{/* Metric annotations on pods, unless a ServiceMonitor scrapes them: (list root port path). */}}
{{- define "headbits.metricsAnnotations" -}}
{{- $root := index . 0 }}
{{- if and $root.Values.metrics.podAnnotations (not $root.Values.metrics.serviceMonitor.enabled) }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ index . 1 | quote }}
prometheus.io/path: {{ index . 2 }}
{{- end }}
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
{{- if .Values.strimzi.users.enabled }}
{{- $_ := set $kafka "security_protocol" "SASL_SSL" }}
{{- $_ := set $kafka "sasl_mechanism" "SCRAM-SHA-512" }}
{{- end }}
{{- with .Values.kafkaTls }}
{{- if or .caSecret .caCertificate }}
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
  "collector" (dict "topics" (list "heads" "deadletter") "writes" (list "heads" "deadletter") "createsTopics" true)
  "featurizer" (dict "topics" (list "heads" "features" "deadletter") "writes" (list "features" "deadletter") "createsTopics" true)
  "scorer" (dict "topics" (list "features" "alerts" "scores" "deadletter" "drift" "rules" "feedback") "writes" (list "alerts" "scores" "deadletter" "drift") "createsTopics" true)
  "trainer" (dict "topics" (list "features" "drift" "feedback") "writes" (list) "createsTopics" false)
  "rollout" (dict "topics" (list "scores" "drift") "writes" (list) "createsTopics" false) }}
{{- toYaml (index $uses .) }}
{{- end }}

{{/*
The verbs that talk to Kafka in this release: one Strimzi KafkaUser each (strimzi.users).
*/}}
{{- define "headbits.kafkaVerbs" -}}
{{- $verbs := list }}
{{- range $verb := list "collector" "featurizer" "scorer" "trainer" }}
{{- if (index $.Values $verb).enabled }}{{ $verbs = append $verbs $verb }}{{ end }}
{{- end }}
{{- if .Values.rolloutController.enabled }}{{ $verbs = append $verbs "rollout" }}{{ end }}
{{- toJson (dict "verbs" $verbs) }}
{{- end }}

{{/* The KafkaUser (and Strimzi's Secret of its password) of a verb: (list root verb). */}}
{{- define "headbits.kafkaUserName" -}}
{{- include "headbits.componentName" (list (index . 0) (printf "kafka-%s" (index . 1))) }}
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
{{- range $kind := list "heads" "features" "alerts" "scores" "deadletter" "drift" "rules" "feedback" }}
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
{{- $secrets := deepCopy $root.Values.secretSettings }}
{{- if and .kafka $root.Values.strimzi.users.enabled }}
{{- $user := include "headbits.kafkaUserName" (list $root .verb) }}
{{- $_ := set $settings "sasl_username" $user }}
{{- $_ := set $secrets "sasl_password" (dict "secretName" $user "key" "password") }}
{{- end }}
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

{{/*
TF Serving's environment for the object store (models.objectStore.env and .envFromSecret), which
the trainer gets too: its S3 or GCS client reads the same variables. `env` items only.
*/}}
{{- define "headbits.objectStoreEnv" -}}
{{- with .Values.models.objectStore.env }}
{{- range $name := keys . | sortAlpha }}
- name: {{ $name }}
  value: {{ get $.Values.models.objectStore.env $name | toString | quote }}
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
{{- else if .caCertificate }}
- name: kafka-tls-ca
  configMap:
    name: {{ include "headbits.componentName" (list $ "kafka-ca") }}
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
{{- if or .caSecret .caCertificate }}
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
