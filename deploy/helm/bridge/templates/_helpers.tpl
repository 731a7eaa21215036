{{- define "bridge.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bridge.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "bridge.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bridge.secretName" -}}
{{- default (include "bridge.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/*
The optional files of the Secret the pod reads, key: BRIDGE_* setting (YAML). A file is wired
when its value is given (the chart's own Secret) or, with secrets.existingSecret, when
secrets.existingSecretKeys lists its key; the SASL and registry passwords also when the
configuration asks for them (a SASL mechanism, a registry user).
*/}}
{{- define "bridge.secretFiles" -}}
{{- $s := .Values.secrets -}}
{{- $existing := ternary $s.existingSecretKeys list (not (empty $s.existingSecret)) -}}
{{- $files := dict
  "kafka-sasl-password" (list "BRIDGE_KAFKA_SASL_PASSWORD_FILE" $s.kafkaSaslPassword .Values.config.kafka_sasl_mechanism)
  "schema-registry-password" (list "BRIDGE_SCHEMA_REGISTRY_PASSWORD_FILE" $s.schemaRegistryPassword .Values.config.schema_registry_username)
  "tls.crt" (list "BRIDGE_TLS_CERTFILE" $s.tlsCert)
  "tls.key" (list "BRIDGE_TLS_KEYFILE" $s.tlsKey)
  "kafka-ca.crt" (list "BRIDGE_KAFKA_SSL_CAFILE" $s.kafkaSslCa)
  "kafka-client.crt" (list "BRIDGE_KAFKA_SSL_CERTFILE" $s.kafkaSslCert)
  "kafka-client.key" (list "BRIDGE_KAFKA_SSL_KEYFILE" $s.kafkaSslKey)
  "schema-registry-ca.crt" (list "BRIDGE_SCHEMA_REGISTRY_CA_FILE" $s.schemaRegistryCa)
-}}
{{- range $key, $entry := $files }}
{{- if or (has $key $existing) (not (empty (rest $entry | compact))) }}
{{ $key | quote }}: {{ first $entry }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Seconds bridge may take to stop after SIGTERM, with the margin: the requests in flight
(ack_timeout rounded up + 2, as bridge.supervisor.graceful_seconds), then the shutdown.
*/}}
{{- define "bridge.stopBudget" -}}
{{- $ack := .Values.config.ack_timeout | default "5" | float64 | ceil -}}
{{- $shutdown := .Values.config.shutdown_timeout | default "10" | float64 | ceil -}}
{{- add $ack 2 $shutdown .Values.terminationGraceMarginSeconds -}}
{{- end -}}
