{{/* ---- names and labels ------------------------------------------------------------------- */}}

{{- define "videoqa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "videoqa.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "videoqa.labels" -}}
app.kubernetes.io/name: {{ include "videoqa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: include "videoqa.selector" (list $ "worker") */}}
{{- define "videoqa.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "videoqa.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "videoqa.componentLabels" -}}
{{ include "videoqa.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The component serving the public API: frontend (split) or server (single). */}}
{{- define "videoqa.publicComponent" -}}
{{- if eq .Values.mode "single" -}}server{{- else -}}frontend{{- end -}}
{{- end -}}

{{- define "videoqa.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "videoqa.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "videoqa.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}

{{- define "videoqa.workerHost" -}}
{{- printf "%s-worker.%s.svc.%s" (include "videoqa.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "videoqa.terminationGracePeriod" -}}
{{- $ := index . 0 -}}
{{- add (int (index . 1)) (int $.Values.shutdownMarginSeconds) -}}
{{- end -}}

{{/* ---- validation ----------------------------------------------------------------------- */}}

{{- define "videoqa.validate" -}}
{{- $s := .Values.security -}}
{{- if not (has .Values.mode (list "split" "single")) -}}
{{- fail (printf "mode must be split or single, not %q" (toString .Values.mode)) -}}
{{- end -}}
{{- if and (not $s.apiKeys.enabled) (not $s.tls.enabled) (not $s.insecure) -}}
{{- fail "security: the public port would have neither API keys nor TLS. Enable security.apiKeys and/or security.tls, or set security.insecure=true explicitly (trials only: VIDEOQA_INSECURE=true)." -}}
{{- end -}}
{{- if and $s.apiKeys.enabled (not $s.apiKeys.existingSecret) (empty $s.apiKeys.keys) -}}
{{- fail "security.apiKeys.enabled: set security.apiKeys.existingSecret (a Secret holding api-keys.json) or security.apiKeys.keys." -}}
{{- end -}}
{{- if and $s.tls.enabled (not $s.tls.existingSecret) -}}
{{- fail "security.tls.enabled: set security.tls.existingSecret (a kubernetes.io/tls Secret with tls.crt and tls.key)." -}}
{{- end -}}
{{- if and $s.tls.clientCA.enabled (not $s.tls.enabled) -}}
{{- fail "security.tls.clientCA.enabled needs security.tls.enabled (mutual TLS is TLS with client certificates)." -}}
{{- end -}}
{{- if and .Values.redis.auth.enabled (not .Values.redis.auth.existingSecret) (not .Values.redis.auth.password) -}}
{{- fail "redis.auth.enabled: set redis.auth.existingSecret (a Secret with the password) or redis.auth.password." -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.externalUrl -}}
{{- fail "redis: set either redis.enabled (bundled Redis) or redis.externalUrl, not both." -}}
{{- end -}}
{{- if not .Values.worker.models -}}
{{- fail "worker.models: name at least one model." -}}
{{- end -}}
{{- if lt (int .Values.shutdownMarginSeconds) 1 -}}
{{- fail "shutdownMarginSeconds must be at least 1 (terminationGracePeriodSeconds must exceed VIDEOQA_GRACE_S)." -}}
{{- end -}}
{{- end -}}

{{/* ---- security: secrets, mounts, env ----------------------------------------------------- */}}

{{- define "videoqa.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "videoqa.fullname" .)) .Values.security.apiKeys.existingSecret -}}
{{- end -}}

{{- define "videoqa.clientCASecret" -}}
{{- default .Values.security.tls.existingSecret .Values.security.tls.clientCA.existingSecret -}}
{{- end -}}

{{/* The client CA comes from its own Secret (mounted apart) or from the TLS Secret itself. */}}
{{- define "videoqa.clientCASeparate" -}}
{{- $t := .Values.security.tls -}}
{{- if and $t.clientCA.enabled $t.clientCA.existingSecret (ne $t.clientCA.existingSecret $t.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "videoqa.security.env" -}}
{{- $s := .Values.security -}}
{{- if $s.apiKeys.enabled }}
- name: VIDEOQA_API_KEYS_FILE
  value: /etc/videoqa/api-keys/api-keys.json
{{- end }}
{{- if $s.tls.enabled }}
- name: VIDEOQA_TLS_CERT_FILE
  value: /etc/videoqa/tls/tls.crt
- name: VIDEOQA_TLS_KEY_FILE
  value: /etc/videoqa/tls/tls.key
- name: VIDEOQA_HEALTH_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.frontend.healthPort) | quote }}
{{- if $s.tls.clientCA.enabled }}
- name: VIDEOQA_TLS_CLIENT_CA_FILE
  value: {{ if include "videoqa.clientCASeparate" . }}/etc/videoqa/client-ca/ca.crt{{ else }}/etc/videoqa/tls/ca.crt{{ end }}
{{- end }}
{{- end }}
{{- if and $s.insecure (not $s.apiKeys.enabled) (not $s.tls.enabled) }}
- name: VIDEOQA_INSECURE
  value: "true"
{{- end }}
{{- end -}}

{{- define "videoqa.security.volumeMounts" -}}
{{- $s := .Values.security -}}
{{- if $s.apiKeys.enabled }}
- name: api-keys
  mountPath: /etc/videoqa/api-keys
  readOnly: true
{{- end }}
{{- if $s.tls.enabled }}
- name: tls
  mountPath: /etc/videoqa/tls
  readOnly: true
{{- if include "videoqa.clientCASeparate" . }}
- name: client-ca
  mountPath: /etc/videoqa/client-ca
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "videoqa.security.volumes" -}}
{{- $s := .Values.security -}}
{{- if $s.apiKeys.enabled }}
- name: api-keys
  secret:
    secretName: {{ include "videoqa.apiKeysSecret" . }}
    defaultMode: 0440
    items:
      - key: {{ if $s.apiKeys.existingSecret }}{{ $s.apiKeys.existingSecretKey }}{{ else }}api-keys.json{{ end }}
        path: api-keys.json
{{- end }}
{{- if $s.tls.enabled }}
- name: tls
  secret:
    secretName: {{ $s.tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- if and $s.tls.clientCA.enabled (not (include "videoqa.clientCASeparate" .)) }}
      - key: {{ $s.tls.clientCA.key }}
        path: ca.crt
      {{- end }}
{{- if include "videoqa.clientCASeparate" . }}
- name: client-ca
  secret:
    secretName: {{ $s.tls.clientCA.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $s.tls.clientCA.key }}
        path: ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/* ---- Redis ---------------------------------------------------------------------------- */}}

{{- define "videoqa.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis.%s.svc.%s:6379/0" (include "videoqa.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- .Values.redis.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "videoqa.redisSecret" -}}
{{- default (printf "%s-redis" (include "videoqa.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{- define "videoqa.redisSecretKey" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecretKey }}{{- else -}}redis-password{{- end -}}
{{- end -}}

{{- define "videoqa.redis.env" -}}
{{- if include "videoqa.redisUrl" . }}
- name: VIDEOQA_REDIS_URL
  value: {{ include "videoqa.redisUrl" . | quote }}
- name: VIDEOQA_REDIS_REPLICA_ACKS
  value: {{ .Values.redis.replicaAcks | quote }}
- name: VIDEOQA_REDIS_TIMEOUT_S
  value: {{ .Values.redis.timeoutSeconds | quote }}
{{- if .Values.redis.username }}
- name: VIDEOQA_REDIS_USERNAME
  value: {{ .Values.redis.username | quote }}
{{- end }}
{{- if .Values.redis.auth.enabled }}
- name: VIDEOQA_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "videoqa.redisSecret" . }}
      key: {{ include "videoqa.redisSecretKey" . }}
{{- end }}
{{- if .Values.redis.caSecret }}
- name: VIDEOQA_REDIS_CA_CERTS
  value: /etc/videoqa/redis-ca/ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/* ---- worker-side pieces (worker and single-mode server) --------------------------------- */}}

{{- define "videoqa.worker.env" -}}
{{- $w := .Values.worker -}}
- name: XDG_CACHE_HOME
  value: {{ $w.modelCache.mountPath | quote }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" $w.modelCache.mountPath | quote }}
- name: VIDEOQA_MODELS
  value: {{ toJson $w.models | quote }}
- name: VIDEOQA_DEVICE
  value: {{ $w.device | quote }}
- name: VIDEOQA_DTYPE
  value: {{ $w.dtype | quote }}
{{- include "videoqa.redis.env" . }}
{{- end -}}

{{- define "videoqa.worker.volumeMounts" -}}
- name: model-cache
  mountPath: {{ .Values.worker.modelCache.mountPath }}
{{- if .Values.worker.shmSize }}
- name: dshm
  mountPath: /dev/shm
{{- end }}
{{- if and (include "videoqa.redisUrl" .) .Values.redis.caSecret }}
- name: redis-ca
  mountPath: /etc/videoqa/redis-ca
  readOnly: true
{{- end }}
{{- with .Values.worker.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "videoqa.worker.volumes" -}}
- name: model-cache
{{- if .Values.worker.modelCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.worker.modelCache.existingClaim }}
{{- else }}
  emptyDir:
    {{- with .Values.worker.modelCache.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}
{{- if .Values.worker.shmSize }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.worker.shmSize }}
{{- end }}
{{- if and (include "videoqa.redisUrl" .) .Values.redis.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.redis.caSecret }}
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- with .Values.worker.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* ---- shared by every videoqa container ---------------------------------------------------- */}}

{{/* include "videoqa.common.env" (list $ graceSeconds) */}}
{{- define "videoqa.common.env" -}}
{{- $ := index . 0 -}}
- name: HOME
  value: /tmp
- name: VIDEOQA_GRACE_S
  value: {{ index . 1 | toString | quote }}
- name: VIDEOQA_METRICS_LISTEN
  value: {{ if $.Values.metrics.enabled }}{{ printf "0.0.0.0:%d" (int $.Values.metrics.port) | quote }}{{ else }}""{{ end }}
{{- end -}}

{{/* include "videoqa.extraEnv" (list map list) */}}
{{- define "videoqa.extraEnv" -}}
{{- range $map := initial . }}
{{- range $name, $value := $map }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- with last . }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* include "videoqa.probe" (list port service timing) */}}
{{- define "videoqa.probe" -}}
grpc:
  port: {{ index . 0 }}
  service: {{ index . 1 | quote }}
{{ toYaml (index . 2) }}
{{- end -}}

{{- define "videoqa.podSpecCommon" -}}
serviceAccountName: {{ include "videoqa.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Scheduling: include "videoqa.scheduling" .Values.worker */}}
{{- define "videoqa.scheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
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
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "videoqa.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 2Gi
{{- end -}}
