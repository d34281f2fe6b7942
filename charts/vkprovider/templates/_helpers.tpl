{{/* The chart name, or nameOverride. */}}
{{- define "vkprovider.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: fullnameOverride, else the release name when it contains the chart name, else
"<release>-<chart>". 63 characters at most (DNS labels).
*/}}
{{- define "vkprovider.fullname" -}}
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

{{- define "vkprovider.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object, but the component. */}}
{{- define "vkprovider.baseLabels" -}}
helm.sh/chart: {{ include "vkprovider.chart" . }}
app.kubernetes.io/name: {{ include "vkprovider.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the provider's objects. */}}
{{- define "vkprovider.labels" -}}
{{ include "vkprovider.baseLabels" . }}
app.kubernetes.io/component: provider
{{- end }}

{{/* The labels that select vkprovider's pods (Deployment, Service, PodDisruptionBudget, spread constraints). */}}
{{- define "vkprovider.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vkprovider.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: provider
{{- end }}

{{- define "vkprovider.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vkprovider.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is given, else repository:tag (tag defaults to the chart's appVersion). */}}
{{- define "vkprovider.imageRef" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion (toString (default "" $image.tag))) -}}
{{- end -}}
{{- end }}

{{- define "vkprovider.image" -}}
{{- include "vkprovider.imageRef" (dict "image" .Values.image "root" .) -}}
{{- end }}

{{/* The helm test hook's image: test.image where set, else the vkprovider image. */}}
{{- define "vkprovider.testImage" -}}
{{- $image := merge (dict) .Values.test.image -}}
{{- if not $image.repository -}}
{{- $_ := set $image "repository" .Values.image.repository -}}
{{- if and (not $image.tag) (not $image.digest) -}}
{{- $_ := set $image "tag" .Values.image.tag -}}
{{- $_ := set $image "digest" .Values.image.digest -}}
{{- end -}}
{{- end -}}
{{- include "vkprovider.imageRef" (dict "image" $image "root" .) -}}
{{- end }}

{{/* Where the mounted Secrets are, in the container. */}}
{{- define "vkprovider.heartbeatSecretDir" -}}/etc/vkprovider/heartbeat{{- end }}
{{- define "vkprovider.mqttCaDir" -}}/etc/vkprovider/mqtt/ca{{- end }}
{{- define "vkprovider.mqttClientDir" -}}/etc/vkprovider/mqtt/client{{- end }}

{{/*
The environment variables the chart sets from its own values: `env` and `extraEnv` may not set them too,
so that each port, tunnel and credential has one value only.
*/}}
{{- define "vkprovider.managedEnv" -}}
NAMESPACE CLIENT_ID VKP_KUBELET_ADDRESS ENABLE_HTTP_TUNNEL HTTP_TUNNEL_LISTEN_PORT VKP_METRICS_PORT VKP_PROBE_PORT
KUBELET_PROXY_PORT KUBELET_PROXY_ENABLED VKP_LOG_FORMAT VKP_LOG_LEVEL ENABLE_MQTT_TUNNEL MQTT_BROKER MQTT_PORT
MQTT_USERNAME MQTT_PASSWORD MQTT_CLIENT_PREFIX MQTT_CA_PATH MQTT_CLIENT_CRT_PATH MQTT_CLIENT_KEY_PATH
VKP_MQTT_ALLOW_INSECURE_PASSWORD VKP_HEARTBEAT_SECRET VKP_HEARTBEAT_SECRET_FILE VKP_ALLOW_UNAUTHENTICATED_BASES
KUBECONFIG
{{- end }}

{{/* Settings that cannot work together fail the install with one line saying what to change. */}}
{{- define "vkprovider.validate" -}}
{{- $managed := splitList " " (include "vkprovider.managedEnv" . | replace "\n" " ") -}}
{{- range $name, $_ := .Values.env }}
{{- if has $name $managed }}
{{- fail (printf "env.%s is set by the chart from its values (ports.*, http.*, mqtt.*, auth.*, kubelet.*, logFormat, logLevel): set those instead" $name) }}
{{- end }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name $managed }}
{{- fail (printf "extraEnv %s is set by the chart from its values (ports.*, http.*, mqtt.*, auth.*, kubelet.*, logFormat, logLevel): set those instead" .name) }}
{{- end }}
{{- end }}
{{- if and (not .Values.http.enabled) (not .Values.mqtt.enabled) }}
{{- fail "no tunnel enabled: set http.enabled and/or mqtt.enabled to true" }}
{{- end }}
{{- if and .Values.mqtt.enabled (not .Values.mqtt.broker) }}
{{- fail "mqtt.enabled needs mqtt.broker (the broker's host name)" }}
{{- end }}
{{- if and .Values.mqtt.enabled .Values.mqtt.passwordSecret.name (not .Values.mqtt.tls.caSecret) (not .Values.mqtt.allowInsecurePassword) }}
{{- fail "mqtt.passwordSecret would send the MQTT password without TLS: set mqtt.tls.caSecret, or mqtt.allowInsecurePassword=true to accept that" }}
{{- end }}
{{- $ports := list (int .Values.ports.heartbeat) (int .Values.ports.metrics) (int .Values.ports.probes) (int .Values.ports.kubelet) }}
{{- if ne (len (uniq $ports)) (len $ports) }}
{{- fail (printf "ports.heartbeat, ports.metrics, ports.probes and ports.kubelet must differ (got %v)" $ports) }}
{{- end }}
{{- end }}
