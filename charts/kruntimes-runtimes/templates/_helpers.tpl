{{/* Labels of every object; pass (dict "root" $ "runtime" "bash"). */}}
{{- define "kruntimes-runtimes.labels" -}}
app.kubernetes.io/name: kruntimes-runtimes
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kruntimes
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Image reference with the same rules as the platform chart. */}}
{{- define "kruntimes-runtimes.image" -}}
{{- $ref := .value | default (printf "%s/%s-runtime:%s" .root.Values.imageRegistry .runtime .root.Chart.AppVersion) -}}
{{- if not (contains "@sha256:" $ref) -}}
{{- $last := last (splitList "/" $ref) -}}
{{- $tag := "" -}}
{{- if contains ":" $last -}}{{- $tag = last (splitList ":" $last) -}}{{- end -}}
{{- if and (or (eq $tag "") (eq $tag "latest")) (not .root.Values.allowMutableImageTags) -}}
{{- fail (printf "%s.image: image %q has no tag or the mutable tag \"latest\"; use an explicit tag or an @sha256 digest (or set allowMutableImageTags=true for development)" .runtime $ref) -}}
{{- end -}}
{{- end -}}
{{- $ref -}}
{{- end -}}
