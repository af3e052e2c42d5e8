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

{{- define "autonomous.pythonImage" -}}
{{- if .Values.python.image.digest -}}
{{ .Values.python.image.repository }}@{{ .Values.python.image.digest }}
{{- else -}}
{{ .Values.python.image.repository }}:{{ .Values.python.image.tag }}
{{- end -}}
{{- end -}}

{{/* A Swift role's arguments: the role, or `serve <role> <graph>` for an app written in Python. */}}
{{- define "autonomous.roleArgs" -}}
{{- $root := index . 0 -}}
{{- if $root.Values.python.servesGraph -}}
{{ toJson (list "serve" (index . 1) "/etc/autonomous/graph/graph.json") }}
{{- else -}}
{{ toJson (list (index . 1)) }}
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
{{- if .Values.python.enabled -}}
{{- if not .Values.graph -}}
{{- fail "python.enabled: graph is empty; autonomous deploy fills it with the app graph (describe)" -}}
{{- end -}}
{{- if not .Values.python.image.repository -}}
{{- fail "python.image.repository: the python-worker role needs an image with Python, the autonomous package and the app's module" -}}
{{- end -}}
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
    image: {{ .image | default (include "autonomous.image" $root) | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    {{- if .command }}
    command: {{ toJson .command }}
    {{- end }}
    args: {{ toJson .args }}
    {{- if $root.Values.natsUsers.existingSecret }}
    env:
      # This role's own NATS user: only the subjects it needs (`autonomous nats-auth`).
      - name: AUTONOMOUS_NATS_USER
        value: {{ .natsUser | default .container }}
      - name: AUTONOMOUS_NATS_PASSWORD
        valueFrom:
          secretKeyRef:
            name: {{ $root.Values.natsUsers.existingSecret }}
            key: {{ .natsUser | default .container }}
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
    {{- if or .state $root.Values.python.enabled }}
    volumeMounts:
      {{- if .state }}
      - name: state
        mountPath: /var/lib/autonomous
      {{- end }}
      {{- if $root.Values.python.enabled }}
      - name: graph
        mountPath: /etc/autonomous/graph
        readOnly: true
      {{- end }}
    {{- end }}
{{- if or .state $root.Values.python.enabled }}
volumes:
  {{- if .state }}
  # Embedded SQLite state for a coordinator without Postgres (tenants and keys made through
  # the admin API need AUTONOMOUS_POSTGRES_URL to survive a restart).
  - name: state
    emptyDir: {}
  {{- end }}
  {{- if $root.Values.python.enabled }}
  # The app graph (autonomous deploy writes it): a Python app's Swift roles serve it, a Swift
  # app's Python workers read it (--graph).
  - name: graph
    configMap:
      name: {{ include "autonomous.fullname" $root }}-graph
  {{- end }}
{{- end }}
{{- end -}}
