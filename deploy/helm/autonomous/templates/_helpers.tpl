{{/* Names: every object is "<release>-<role>" unless the release is already called autonomous. */}}
{{- define "autonomous.fullname" -}}
{{- if eq .Release.Name "autonomous" -}}autonomous{{- else -}}{{ printf "%s-autonomous" .Release.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "autonomous.labels" -}}
app.kubernetes.io/name: autonomous
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: autonomous
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one role: (list $ "ingress"). */}}
{{- define "autonomous.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: autonomous
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "autonomous.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* Refuses values that open the cluster without saying so. */}}
{{- define "autonomous.validate" -}}
{{- if and (not .Values.requireAPIKey) (not .Values.allowOpen) -}}
{{- fail "requireAPIKey is false: anyone could write records. Set allowOpen: true as well if that is what you want." -}}
{{- end -}}
{{- if and .Values.httpIngress.enabled (not .Values.httpIngress.tls.enabled) (not .Values.allowPlainHTTP) -}}
{{- fail "httpIngress.tls.enabled is false: API keys would cross the network in clear text. Set allowPlainHTTP: true as well if that is what you want." -}}
{{- end -}}
{{- if and .Values.httpIngress.tls.enabled (not .Values.httpIngress.tls.secretName) -}}
{{- fail "httpIngress.tls.secretName: name the kubernetes.io/tls Secret that holds the certificate" -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9][a-z0-9_-]{0,63}$" (toString .Values.tenant)) -}}
{{- fail (printf "tenant %q: expected 1-64 of [a-z0-9_-]" (toString .Values.tenant)) -}}
{{- end -}}
{{- range .Values.workerGroups -}}
{{- if not (regexMatch "^[a-z0-9][a-z0-9_-]{0,39}$" (toString .name)) -}}
{{- fail (printf "workerGroups: name %q: expected 1-40 of [a-z0-9_-]" (toString .name)) -}}
{{- end -}}
{{- if not .handlers -}}
{{- fail (printf "workerGroups[%s]: handlers is empty" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The pod spec every role shares: (dict "root" $ "component" "worker" "args" (list "worker") "port" (dict …)). */}}
{{- define "autonomous.podSpec" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "autonomous.fullname" $root }}
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
containers:
  - name: {{ .container }}
    image: {{ include "autonomous.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args: {{ toJson .args }}
    {{- if $root.Values.natsUsers.existingSecret }}
    env:
      # This role's own NATS user: only the subjects it needs (`autonomous nats-auth`).
      - name: AUTONOMOUS_NATS_USER
        value: {{ .container }}
      - name: AUTONOMOUS_NATS_PASSWORD
        valueFrom:
          secretKeyRef:
            name: {{ $root.Values.natsUsers.existingSecret }}
            key: {{ .container }}
    {{- end }}
    envFrom:
      - configMapRef:
          name: {{ include "autonomous.fullname" $root }}-config
      - secretRef:
          name: {{ $root.Values.existingSecret }}
          optional: true
    ports:
      - name: {{ .portName }}
        containerPort: {{ .port }}
    livenessProbe:
      httpGet:
        path: /healthz
        port: {{ .portName }}
      periodSeconds: 10
      failureThreshold: 3
    readinessProbe:
      httpGet:
        path: /readyz
        port: {{ .portName }}
      periodSeconds: 5
      failureThreshold: 2
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities:
        drop: ["ALL"]
    resources:
      {{- toYaml .resources | nindent 6 }}
    {{- if .state }}
    volumeMounts:
      - name: state
        mountPath: /var/lib/autonomous
    {{- end }}
{{- if .state }}
volumes:
  # Embedded SQLite state for a coordinator without Postgres (tenants and keys made through
  # the admin API need AUTONOMOUS_POSTGRES_URL to survive a restart).
  - name: state
    emptyDir: {}
{{- end }}
{{- end -}}
