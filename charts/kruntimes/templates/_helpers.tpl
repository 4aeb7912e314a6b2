{{/* Name prefix of every object: fullnameOverride, else the release name. */}}
{{- define "kruntimes.fullname" -}}
{{- .Values.fullnameOverride | default .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; pass (dict "root" $ "component" "scheduler"). */}}
{{- define "kruntimes.labels" -}}
app.kubernetes.io/name: kruntimes
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kruntimes
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of a component's Pods (stable across upgrades). */}}
{{- define "kruntimes.selectorLabels" -}}
app.kubernetes.io/name: kruntimes
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
An image reference: the value, or <imageRegistry>/<component>:<appVersion>.
Refuses a reference without a tag or with "latest" unless allowMutableImageTags.
Pass (dict "root" $ "value" .Values.x.image "component" "scheduler" "key" "scheduler.image").
*/}}
{{- define "kruntimes.image" -}}
{{- $ref := .value | default (printf "%s/%s:%s" .root.Values.imageRegistry .component .root.Chart.AppVersion) -}}
{{- if not (contains "@sha256:" $ref) -}}
{{- $last := last (splitList "/" $ref) -}}
{{- $tag := "" -}}
{{- if contains ":" $last -}}{{- $tag = last (splitList ":" $last) -}}{{- end -}}
{{- if and (or (eq $tag "") (eq $tag "latest")) (not .root.Values.allowMutableImageTags) -}}
{{- fail (printf "%s: image %q has no tag or the mutable tag \"latest\"; use an explicit tag or an @sha256 digest (or set allowMutableImageTags=true for development)" .key $ref) -}}
{{- end -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* The scheduler link Service address the controller gives runtimed. */}}
{{- define "kruntimes.schedulerAddress" -}}
{{- printf "%s-scheduler.%s.svc:%v" (include "kruntimes.fullname" .) .Release.Namespace .Values.scheduler.linkPort -}}
{{- end -}}

{{/*
The Deployment of a platform component.
Pass (dict "root" $ "component" "scheduler" "values" .Values.scheduler "args" (list ...) "ports" (list (dict "name" "link" "port" 7443))).
*/}}
{{- define "kruntimes.deployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $name := printf "%s-%s" (include "kruntimes.fullname" $root) .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kruntimes.labels" (dict "root" $root "component" .component) | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "kruntimes.selectorLabels" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "kruntimes.labels" (dict "root" $root "component" .component) | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: true
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "kruntimes.image" (dict "root" $root "value" $v.image "component" .component "key" (printf "%s.image" .component)) | quote }}
          imagePullPolicy: {{ $root.Values.imagePullPolicy }}
          args:
            {{- range .args }}
            - {{ . | quote }}
            {{- end }}
            - "--log-level={{ $v.logLevel }}"
            - "--log-format={{ $v.logFormat }}"
            - "--metrics-listen=0.0.0.0:{{ $v.metricsPort }}"
            - "--health-listen=0.0.0.0:{{ $v.healthPort }}"
            - "--leader-elect={{ $v.leaderElection.enabled }}"
            - "--leader-election-namespace={{ $root.Release.Namespace }}"
            - "--leader-election-id={{ $name }}"
            - "--leader-election-lease-duration={{ $v.leaderElection.leaseDuration }}"
            - "--leader-election-renew-deadline={{ $v.leaderElection.renewDeadline }}"
            - "--leader-election-retry-period={{ $v.leaderElection.retryPeriod }}"
            {{- range $v.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            - name: POD_NAMESPACE
              valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            {{- range .ports }}
            - name: {{ .name }}
              containerPort: {{ .port }}
              protocol: TCP
            {{- end }}
            - name: metrics
              containerPort: {{ $v.metricsPort }}
              protocol: TCP
            - name: health
              containerPort: {{ $v.healthPort }}
              protocol: TCP
          livenessProbe:
            {{- toYaml $v.livenessProbe | nindent 12 }}
          readinessProbe:
            {{- toYaml $v.readinessProbe | nindent 12 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            # The root filesystem is read-only; /tmp is the only scratch space.
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
{{- end -}}
