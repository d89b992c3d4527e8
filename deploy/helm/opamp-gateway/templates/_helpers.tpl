{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "opamp-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or <release> when the release name already contains the chart name. */}}
{{- define "opamp-gateway.fullname" -}}
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

{{- define "opamp-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "opamp-gateway.labels" -}}
helm.sh/chart: {{ include "opamp-gateway.chart" . }}
app.kubernetes.io/name: {{ include "opamp-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: opamp-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the gateway pods (immutable once installed: never add to them). */}}
{{- define "opamp-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "opamp-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "opamp-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "opamp-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "opamp-gateway.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Where mounted files live in the container. */}}
{{- define "opamp-gateway.paths.data" -}}/var/lib/opamp-gateway{{- end }}
{{- define "opamp-gateway.paths.agentKeys" -}}/etc/opamp-gateway/agent-keys/agent-keys{{- end }}
{{- define "opamp-gateway.paths.adminToken" -}}/etc/opamp-gateway/admin-token/admin-token{{- end }}
{{- define "opamp-gateway.paths.esCA" -}}/etc/opamp-gateway/elasticsearch-ca/ca.crt{{- end }}
{{- define "opamp-gateway.paths.tlsDir" -}}/etc/opamp-gateway/tls{{- end }}
{{- define "opamp-gateway.paths.clientCA" -}}/etc/opamp-gateway/tls-client-ca/ca.crt{{- end }}

{{/* Which optional parts are configured ("true" or ""). */}}
{{- define "opamp-gateway.useElasticsearch" -}}
{{- if eq .Values.store.type "elasticsearch" }}true{{ end }}
{{- end }}
{{- define "opamp-gateway.useRedis" -}}
{{- if or .Values.redis.existingSecret.name .Values.redis.url }}true{{ end }}
{{- end }}
{{- define "opamp-gateway.generateAgentKeys" -}}
{{- if and .Values.auth.generate (not .Values.auth.allowAnonymous) (not (or .Values.auth.agentKeys.existingSecret .Values.auth.agentKeys.value)) }}true{{ end }}
{{- end }}
{{- define "opamp-gateway.generateAdminToken" -}}
{{- if and .Values.auth.generate (not .Values.auth.allowAnonymous) (not (or .Values.auth.adminToken.existingSecret .Values.auth.adminToken.value)) }}true{{ end }}
{{- end }}
{{- define "opamp-gateway.useAgentKeys" -}}
{{- if or .Values.auth.agentKeys.existingSecret .Values.auth.agentKeys.value (include "opamp-gateway.generateAgentKeys" .) }}true{{ end }}
{{- end }}
{{- define "opamp-gateway.useAdminToken" -}}
{{- if or .Values.auth.adminToken.existingSecret .Values.auth.adminToken.value (include "opamp-gateway.generateAdminToken" .) }}true{{ end }}
{{- end }}
{{/* A credential the chart generates: the value already in the release's Secret (so upgrades keep it), else a new random one. */}}
{{- define "opamp-gateway.generated" -}}
{{- $secret := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $secret $secret.data (index $secret.data .key) }}
{{- index $secret.data .key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- define "opamp-gateway.runMigrate" -}}
{{- if and (include "opamp-gateway.useElasticsearch" .) .Values.elasticsearch.migrate.enabled }}true{{ end }}
{{- end }}

{{/* Secrets: an existing Secret when named, else the one the chart writes from literal values. */}}
{{- define "opamp-gateway.esSecretName" -}}
{{- default (printf "%s-elasticsearch" (include "opamp-gateway.fullname" .)) .Values.elasticsearch.existingSecret.name }}
{{- end }}
{{- define "opamp-gateway.esUrlKey" -}}
{{- if .Values.elasticsearch.existingSecret.name }}{{ .Values.elasticsearch.existingSecret.urlKey }}{{ else }}url{{ end }}
{{- end }}
{{- define "opamp-gateway.esApiKeyKey" -}}
{{- if .Values.elasticsearch.existingSecret.name }}{{ .Values.elasticsearch.existingSecret.apiKeyKey }}{{ else }}api-key{{ end }}
{{- end }}
{{- define "opamp-gateway.redisSecretName" -}}
{{- default (printf "%s-redis" (include "opamp-gateway.fullname" .)) .Values.redis.existingSecret.name }}
{{- end }}
{{- define "opamp-gateway.redisUrlKey" -}}
{{- if .Values.redis.existingSecret.name }}{{ .Values.redis.existingSecret.urlKey }}{{ else }}url{{ end }}
{{- end }}
{{- define "opamp-gateway.agentKeysSecretName" -}}
{{- default (printf "%s-agent-keys" (include "opamp-gateway.fullname" .)) .Values.auth.agentKeys.existingSecret }}
{{- end }}
{{- define "opamp-gateway.agentKeysKey" -}}
{{- if .Values.auth.agentKeys.existingSecret }}{{ .Values.auth.agentKeys.key }}{{ else }}agent-keys{{ end }}
{{- end }}
{{- define "opamp-gateway.adminTokenSecretName" -}}
{{- default (printf "%s-admin-token" (include "opamp-gateway.fullname" .)) .Values.auth.adminToken.existingSecret }}
{{- end }}
{{- define "opamp-gateway.adminTokenKey" -}}
{{- if .Values.auth.adminToken.existingSecret }}{{ .Values.auth.adminToken.key }}{{ else }}admin-token{{ end }}
{{- end }}
{{/* The migrate hook's Secret: created before the hook Job, holding what no pre-existing Secret does. */}}
{{- define "opamp-gateway.migrateSecretName" -}}
{{- printf "%s-migrate" (include "opamp-gateway.fullname" .) }}
{{- end }}

{{/* Refuse combinations that cannot work, with a message that says what to change. */}}
{{- define "opamp-gateway.validate" -}}
{{- $v := .Values }}
{{- if eq $v.store.type "sqlite" }}
{{- if or (gt (int $v.replicaCount) 1) $v.autoscaling.enabled }}
{{- fail "store.type=sqlite keeps agent state in one pod's file, so it allows exactly one replica: set replicaCount=1 and autoscaling.enabled=false, or use store.type=elasticsearch (with elasticsearch.url or elasticsearch.existingSecret.name) to run more than one replica." }}
{{- end }}
{{- else }}
{{- if not (or $v.elasticsearch.existingSecret.name $v.elasticsearch.url) }}
{{- fail "store.type=elasticsearch needs the cluster's address: set elasticsearch.existingSecret.name (a Secret with keys url and api-key) or elasticsearch.url and elasticsearch.apiKey." }}
{{- end }}
{{- if not (or $v.elasticsearch.existingSecret.name $v.elasticsearch.apiKey) }}
{{- fail "store.type=elasticsearch needs the gateway's API key: set elasticsearch.apiKey, or elasticsearch.existingSecret.name (a Secret with keys url and api-key)." }}
{{- end }}
{{- if and $v.elasticsearch.migrate.enabled (not (or $v.elasticsearch.migrate.existingSecret.name $v.elasticsearch.migrate.apiKey)) }}
{{- fail "elasticsearch.migrate.enabled needs its own privileged API key (it creates index templates and indices): set elasticsearch.migrate.existingSecret.name or elasticsearch.migrate.apiKey, or set elasticsearch.migrate.enabled=false and run `opamp-gateway migrate` yourself before installing." }}
{{- end }}
{{- end }}
{{- if and $v.store.sqlite.persistence.enabled (ne $v.store.type "sqlite") }}
{{- fail "store.sqlite.persistence.enabled is only meaningful with store.type=sqlite." }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not be greater than autoscaling.maxReplicas." }}
{{- end }}
{{- if and $v.tls.enabled (not $v.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: a Secret of type kubernetes.io/tls (e.g. from cert-manager)." }}
{{- end }}
{{- if and $v.tls.clientCA.secretName (not $v.tls.enabled) }}
{{- fail "tls.clientCA.secretName (mTLS) needs tls.enabled=true." }}
{{- end }}
{{- end }}

{{/* The container's probe scheme: HTTPS when the gateway serves TLS (on both ports). */}}
{{- define "opamp-gateway.probeScheme" -}}
{{- if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}
{{/* The port probes and `helm test` use: the OpAMP port, or the admin port under mutual TLS (the
kubelet has no client certificate; the admin port serves TLS without asking for one). */}}
{{- define "opamp-gateway.probePort" -}}
{{- if and .Values.tls.enabled .Values.tls.clientCA.secretName }}admin{{ else }}opamp{{ end }}
{{- end }}

{{/* Non-secret Elasticsearch settings, as ConfigMap entries; the migrate Job gets the same values as env. */}}
{{- define "opamp-gateway.esSettings" -}}
OPAMP_GATEWAY_ELASTICSEARCH_AGENTS_ALIAS: {{ .Values.elasticsearch.agentsAlias | quote }}
OPAMP_GATEWAY_ELASTICSEARCH_CONFIGS_ALIAS: {{ .Values.elasticsearch.configsAlias | quote }}
OPAMP_GATEWAY_ELASTICSEARCH_REFRESH_INTERVAL: {{ .Values.elasticsearch.refreshInterval | quote }}
OPAMP_GATEWAY_ELASTICSEARCH_TIMEOUT: {{ .Values.elasticsearch.timeout | toString | quote }}
{{- end }}

{{/* Environment of the migrate Job, which runs before the release's ConfigMap and Secrets exist. */}}
{{- define "opamp-gateway.migrateEnv" -}}
- name: OPAMP_GATEWAY_LOG_LEVEL
  value: {{ .Values.gateway.logLevel | quote }}
- name: OPAMP_GATEWAY_LOG_FORMAT
  value: {{ .Values.gateway.logFormat | quote }}
{{- range $name, $value := include "opamp-gateway.esSettings" . | fromYaml }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
- name: OPAMP_GATEWAY_ELASTICSEARCH_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.elasticsearch.existingSecret.name }}
      name: {{ .Values.elasticsearch.existingSecret.name }}
      key: {{ .Values.elasticsearch.existingSecret.urlKey }}
      {{- else }}
      name: {{ include "opamp-gateway.migrateSecretName" . }}
      key: url
      {{- end }}
- name: OPAMP_GATEWAY_ELASTICSEARCH_API_KEY
  valueFrom:
    secretKeyRef:
      {{- if .Values.elasticsearch.migrate.existingSecret.name }}
      name: {{ .Values.elasticsearch.migrate.existingSecret.name }}
      key: {{ .Values.elasticsearch.migrate.existingSecret.apiKeyKey }}
      {{- else }}
      name: {{ include "opamp-gateway.migrateSecretName" . }}
      key: api-key
      {{- end }}
{{- if .Values.elasticsearch.caCert.secretName }}
- name: OPAMP_GATEWAY_ELASTICSEARCH_CA_CERT
  value: {{ include "opamp-gateway.paths.esCA" . }}
{{- end }}
{{- end }}
