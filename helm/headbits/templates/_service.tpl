{{/*
A Deployment running `headbits <verb>` from the service's image, with Prometheus metrics,
/healthz (liveness: the loop runs) and /readyz (readiness: and Kafka answers) on its settings'
metrics_port:
(dict "root" $ "component" "scorer" "name" "scorer" "verb" "scorer" "values" .Values.scorer
      "settings" merged-settings "replicas" n)
*/}}
{{- define "headbits.serviceDeployment" -}}
{{- $root := .root }}
{{- $values := .values }}
{{- $port := int (default 9100 .settings.metrics_port) }}
{{- $deployment := include "headbits.shortName" (list .name 63) }}
{{- $autoscaled := and $values.autoscaling (or $values.autoscaling.enabled $values.autoscaling.lag.enabled) }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "headbits.componentName" (list $root .name) }}
  labels:
    {{- include "headbits.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ .replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "headbits.selectorLabels" (list $root .component) | nindent 6 }}
      headbits.io/deployment: {{ $deployment }}
  strategy:
    # Start the new pod before stopping the old one: a duplicate is harmless (scoring is
    # idempotent by uid), a gap loses what Zeek sent meanwhile.
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "headbits.selectorLabels" (list $root .component) | nindent 8 }}
        headbits.io/deployment: {{ $deployment }}
      {{- $annotations := merge (include "headbits.metricsAnnotations" (list $root $port "/metrics") | fromYaml) (deepCopy $values.podAnnotations) }}
      {{- if .rules }}
      {{- $annotations = merge $annotations (dict "headbits.io/rules-checksum" (toYaml $values.rules | sha256sum)) }}
      {{- end }}
      {{- with $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "headbits.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      # SIGTERM finishes the batch, flushes the producer and commits stored offsets.
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      containers:
        - name: {{ .component }}
          image: {{ include "headbits.image" (list $root .component) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["headbits"]
          args: [{{ .verb | quote }}]
          env:
            {{- include "headbits.settingsEnv" (dict "root" $root "settings" .settings "kafka" true "verb" .verb) | trim | nindent 12 }}
          ports:
            - name: metrics
              containerPort: {{ $port }}
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            initialDelaySeconds: 10
            periodSeconds: 15
            timeoutSeconds: 5
            failureThreshold: 4
          # Not ready while Kafka is unreachable (a metadata request), without a restart.
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 10
            timeoutSeconds: 5
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "headbits.kafkaVolumeMounts" $root | nindent 12 }}
            {{- if .rules }}
            - name: rules
              mountPath: /etc/headbits/rules
              readOnly: true
            {{- end }}
      volumes:
        {{- include "headbits.kafkaVolumes" $root | nindent 8 }}
        {{- if .rules }}
        # The chart's static suppression rules (scorer.rules); a change rolls the pods.
        - name: rules
          configMap:
            name: {{ include "headbits.componentName" (list $root "scorer-rules") }}
        {{- end }}
      {{- include "headbits.scheduling" $values | nindent 6 }}
{{- end }}
