{{- define "forgelink.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "forgelink.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "forgelink.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "forgelink.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "forgelink.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "forgelink.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* Where the Temporal TLS files are mounted. */}}
{{- define "forgelink.tlsDir" -}}/etc/forgelink/temporal-tls{{- end -}}

{{/* The TLS files present: [ca cert key] each with its key in the Secret, or empty when absent. */}}
{{- define "forgelink.tlsFiles" -}}
{{- $t := .Values.temporal.tls -}}
{{- if $t.existingSecret -}}
{{- dict "ca" ($t.files.ca | default "") "cert" ($t.files.cert | default "") "key" ($t.files.key | default "") | toJson -}}
{{- else -}}
{{- dict "ca" (ternary "ca.crt" "" (ne $t.ca "")) "cert" (ternary "tls.crt" "" (ne $t.cert "")) "key" (ternary "tls.key" "" (ne $t.key "")) | toJson -}}
{{- end -}}
{{- end -}}

{{/* The config file forgelink reads (FORGELINK_CONFIG): every key but the secrets, which come from the environment. */}}
{{- define "forgelink.config" -}}
{{- $v := .Values -}}
{{- $gh := $v.gitProviders.github -}}
{{- $temporal := dict "address" $v.temporal.address "namespace" $v.temporal.namespace "taskQueue" $v.temporal.taskQueue -}}
{{- with $v.temporal.uiUrl }}{{ $_ := set $temporal "uiUrl" . }}{{ end -}}
{{- with $v.temporal.requestDeadlineSeconds }}{{ $_ := set $temporal "requestDeadlineSeconds" . }}{{ end -}}
{{- if $v.temporal.tls.enabled -}}
{{- $files := include "forgelink.tlsFiles" . | fromJson -}}
{{- $tls := dict -}}
{{- with $v.temporal.tls.serverName }}{{ $_ := set $tls "serverName" . }}{{ end -}}
{{- if $files.ca }}{{ $_ := set $tls "caFile" (printf "%s/%s" (include "forgelink.tlsDir" .) $files.ca) }}{{ end -}}
{{- if $files.cert }}{{ $_ := set $tls "certFile" (printf "%s/%s" (include "forgelink.tlsDir" .) $files.cert) }}{{ end -}}
{{- if $files.key }}{{ $_ := set $tls "keyFile" (printf "%s/%s" (include "forgelink.tlsDir" .) $files.key) }}{{ end -}}
{{- $_ := set $temporal "tls" $tls -}}
{{- end -}}
{{- $github := dict "enabled" $gh.enabled "baseUrl" $gh.baseUrl -}}
{{- range $k := list "appId" "appName" "clientId" "webUrl" }}{{ with index $gh $k }}{{ $_ := set $github $k (toString .) }}{{ end }}{{ end -}}
{{- $azure := dict "enabled" $v.gitProviders.azureDevOps.enabled -}}
{{- with $v.gitProviders.azureDevOps.webhookBasicAuthUser }}{{ $_ := set $azure "webhookBasicAuthUser" . }}{{ end -}}
{{- $config := dict
  "publicUrl" $v.publicUrl
  "api" (dict "host" "0.0.0.0" "port" (int $v.api.port))
  "temporal" $temporal
  "encryption" (dict "keyId" $v.encryption.keyId)
  "gitProviders" (dict "github" $github "gitlab" (dict "enabled" $v.gitProviders.gitlab.enabled) "bitbucket" (dict "enabled" $v.gitProviders.bitbucket.enabled) "azureDevOps" $azure)
  "shutdown" $v.shutdown
  "worker" $v.worker.sizing
  "metrics" (dict "enabled" $v.metrics.enabled "api" (dict "port" (int $v.metrics.port) "path" $v.metrics.path) "worker" (dict "port" (int $v.metrics.port) "path" $v.metrics.path))
-}}
{{- mustMergeOverwrite $config (deepCopy $v.config) | toYaml -}}
{{- end -}}

{{/*
Secrets as environment variables: [env name, value, existingSecret, key in it]. An entry with
neither a value nor an existingSecret is left out (forgelink then names the missing key at start).
*/}}
{{- define "forgelink.secretEnv" -}}
{{- $v := .Values -}}
{{- $p := $v.gitProviders -}}
{{- $list := list
  (list "FORGELINK_DATABASE_URL" $v.database.url $v.database.existingSecret "url")
  (list "FORGELINK_ADMIN_TOKEN" $v.auth.adminToken $v.auth.existingSecret "adminToken")
  (list "FORGELINK_ENCRYPTION_KEY" $v.encryption.key $v.encryption.existingSecret "key")
  (list "TEMPORAL_API_KEY" $v.temporal.apiKey $v.temporal.apiKeyExistingSecret "apiKey")
-}}
{{- if $p.github.enabled -}}
{{- $list = concat $list (list (list "FORGELINK_GITHUB_PRIVATE_KEY" $p.github.privateKey $p.github.existingSecret "privateKey") (list "FORGELINK_GITHUB_WEBHOOK_SECRET" $p.github.webhookSecret $p.github.existingSecret "webhookSecret") (list "FORGELINK_GITHUB_CLIENT_SECRET" $p.github.clientSecret $p.github.existingSecret "clientSecret")) -}}
{{- end -}}
{{- if $p.gitlab.enabled }}{{ $list = append $list (list "FORGELINK_GITLAB_WEBHOOK_SECRET" $p.gitlab.webhookSecret $p.gitlab.existingSecret "webhookSecret") }}{{ end -}}
{{- if $p.bitbucket.enabled }}{{ $list = append $list (list "FORGELINK_BITBUCKET_WEBHOOK_SECRET" $p.bitbucket.webhookSecret $p.bitbucket.existingSecret "webhookSecret") }}{{ end -}}
{{- if $p.azureDevOps.enabled }}{{ $list = append $list (list "FORGELINK_AZURE_DEVOPS_WEBHOOK_PASS" $p.azureDevOps.webhookBasicAuthPass $p.azureDevOps.existingSecret "webhookBasicAuthPass") }}{{ end -}}
{{- $out := list -}}
{{- range $list }}{{ if or (index . 1) (index . 2) }}{{ $out = append $out . }}{{ end }}{{ end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The container environment and mounts every forgelink process shares. */}}
{{/* dict root, secretName: the chart's Secret holding the values given inline. */}}
{{- define "forgelink.env" -}}
- name: FORGELINK_CONFIG
  value: /etc/forgelink/forgelink.yml
{{- range (include "forgelink.secretEnv" .root | fromJsonArray) }}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ index . 2 | default $.secretName }}
      key: {{ if index . 2 }}{{ index . 3 }}{{ else }}{{ index . 0 }}{{ end }}
{{- end }}
{{- end -}}

{{/* The chart's Secret data: each secret given inline, under its environment variable's name. */}}
{{- define "forgelink.secretData" -}}
{{- range (include "forgelink.secretEnv" . | fromJsonArray) }}
{{- if not (index . 2) }}
{{ index . 0 }}: {{ index . 1 | toString | b64enc | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "forgelink.volumeMounts" -}}
- name: config
  mountPath: /etc/forgelink/forgelink.yml
  subPath: forgelink.yml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.temporal.tls.enabled }}
- name: temporal-tls
  mountPath: {{ include "forgelink.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* dict root, configMap: the ConfigMap holding forgelink.yml. */}}
{{- define "forgelink.volumes" -}}
- name: config
  configMap:
    name: {{ .configMap }}
# The root filesystem is read-only; /tmp is the one writable place.
- name: tmp
  emptyDir: {}
{{- with .root }}
{{- if .Values.temporal.tls.enabled }}
- name: temporal-tls
  secret:
    secretName: {{ .Values.temporal.tls.existingSecret | default (printf "%s-temporal-tls" (include "forgelink.fullname" .)) }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "forgelink.podSpec" -}}
serviceAccountName: {{ include "forgelink.serviceAccountName" .root }}
securityContext: {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
volumes: {{- include "forgelink.volumes" (dict "root" .root "configMap" (printf "%s-config" (include "forgelink.fullname" .root))) | nindent 2 }}
{{- end -}}

{{/*
Prometheus scrape annotations and the metrics container port (metrics.port, its own listener so the
Ingress never exposes it).
*/}}
{{- define "forgelink.metricsAnnotations" -}}
{{- if .Values.metrics.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: {{ .Values.metrics.path | quote }}
{{- end }}
{{- end -}}
