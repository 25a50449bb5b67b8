{{/* Chart name. */}}
{{- define "rewind.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of namespaced objects. */}}
{{- define "rewind.fullname" -}}
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

{{/* Name of cluster-scoped objects: includes the release namespace so two installs of the
     same release name in different namespaces cannot collide. */}}
{{- define "rewind.clusterName" -}}
{{- printf "%s-%s" (include "rewind.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "rewind.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rewind.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rewind.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rewind.labels" -}}
helm.sh/chart: {{ include "rewind.chart" . }}
{{ include "rewind.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rewind
{{- end }}

{{- define "rewind.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rewind.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rewind.metricsServiceName" -}}
{{- printf "%s-metrics" (include "rewind.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <repository>@<digest> when a digest is set, else <repository>:<tag or appVersion>. */}}
{{- define "rewind.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True ("true") when the operator watches a fixed list of namespaces. */}}
{{- define "rewind.namespaced" -}}
{{- if .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/* Fails the render on contradictory values. */}}
{{- define "rewind.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.peering.enabled) }}
{{- fail "replicas > 1 needs peering.enabled=true: standalone Kopf operators would handle the same objects twice" }}
{{- end }}
{{- if and .Values.prometheus.auth.bearerToken.secretName .Values.prometheus.auth.basicAuth.secretName }}
{{- fail "set at most one of prometheus.auth.bearerToken.secretName and prometheus.auth.basicAuth.secretName" }}
{{- end }}
{{- if and .Values.mlflow.auth.token.secretName .Values.mlflow.auth.basicAuth.secretName }}
{{- fail "set at most one of mlflow.auth.token.secretName and mlflow.auth.basicAuth.secretName" }}
{{- end }}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) }}
{{- fail "watchNamespaces lists a namespace twice" }}
{{- end }}
{{- end }}

{{/* Rules the operator needs in every namespace it watches (ClusterRole when it watches all
     namespaces, a Role per namespace otherwise). Each rule says why. */}}
{{- define "rewind.namespacedRules" -}}
# Its own API: watch releases, write status, and Kopf's progress/finalizer annotations.
- apiGroups: [rewind.dev]
  resources: [modelreleases]
  verbs: [get, list, watch, patch, update]
- apiGroups: [rewind.dev]
  resources: [modelreleases/status]
  verbs: [get, patch, update]
# Owned objects carry blockOwnerDeletion: true; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's
# finalizers for that.
- apiGroups: [rewind.dev]
  resources: [modelreleases/finalizers]
  verbs: [update]
# Policies are read-only for the operator; it only writes their status (strategy column,
# observedGeneration, Ready condition).
- apiGroups: [rewind.dev]
  resources: [rolloutpolicies]
  verbs: [get, list, watch]
- apiGroups: [rewind.dev]
  resources: [rolloutpolicies/status]
  verbs: [get, patch, update]
# Quarantines (what is known to be bad) are read-only for the operator.
- apiGroups: [rewind.dev]
  resources: [quarantines]
  verbs: [get, list, watch]
# One Deployment per revision (server-side apply = patch), scaled through /scale; the
# Deployment a serving.workloadRef names is only read (get, watch), never written.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [patch]
# Artifact integrity (RolloutPolicy spec.integrity): a signature's trust root in a ConfigMap,
# read by name when a revision is verified; get only, never listed or watched. Secrets (S3
# credentials, a trust root kept in a Secret) only with integrity.readSecrets.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
{{- if .Values.integrity.readSecrets }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
# A revision's pods, read for Istio's proxy (sidecar or ambient) where one is expected.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Per-revision Services, and the umbrella Service (the in-cluster name) the router points
# at the stable revision (server-side apply = patch).
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, update, delete]
# Revision snapshots and their history records (no ownerReference: they outlive a
# deleted release): the spec is created once and never changes; the record in the
# metadata is patched as the outcome changes; deleted only by the retention sweep, by
# rewind.dev/forget-history, or to replace a snapshot a crash left unrecorded.
- apiGroups: [apps]
  resources: [controllerrevisions]
  verbs: [get, list, watch, create, patch, delete]
# The release's traffic split (server-side apply = patch). list/watch also feed the
# operator's index of every VirtualService it can see, where route conflicts (another
# VirtualService on a release's host and gateway) are looked up; get reads one back.
# DestinationRules: read and deleted only when left by routes written before per-revision
# Services (the routes need none now).
- apiGroups: [networking.istio.io]
  resources: [virtualservices, destinationrules]
  verbs: [get, list, watch, create, patch, update, delete]
# The same on Gateway API (spec.traffic.gatewayAPI): the release's HTTPRoute; list/watch
# feed the index of HTTPRoutes where precedence conflicts are looked up, and wake a
# release when a gateway accepts or refuses its route (status is read, never written).
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, create, patch, update, delete]
# One InferencePool per revision (spec.traffic.gatewayAPI.inferencePool).
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [get, create, patch, update, delete]
# Events about releases (the operator's recorder and Kopf's handler events).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- with .Values.rbac.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Kopf peering rules for the given resource (clusterkopfpeerings or kopfpeerings). */}}
{{- define "rewind.peeringRules" -}}
# Kopf peering: see the other operators (list/watch) and publish this one's keep-alive
# (get/patch, on our peering object only).
- apiGroups: [kopf.dev]
  resources: [{{ .resource }}]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [{{ .resource }}]
  resourceNames: [{{ .name | quote }}]
  verbs: [get, patch]
{{- end }}

{{/* The MutatingAdmissionPolicy API this cluster serves ("" when none): v1 (Kubernetes 1.36),
     else v1beta1 (1.34-1.35, only where the API server enables it). Helm sees what the
     cluster serves on install/upgrade; `helm template` sees only its built-in group
     versions plus --api-versions, so there it is "" unless passed
     --api-versions admissionregistration.k8s.io/v1/MutatingAdmissionPolicy. */}}
{{- define "rewind.mutatingAdmissionPolicyAPI" -}}
{{- if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" -}}
admissionregistration.k8s.io/v1
{{- else if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy" -}}
admissionregistration.k8s.io/v1beta1
{{- end -}}
{{- end }}

{{/* Who writes rewind.dev/<action>-by (humanActions.stamp): "server" (a
     MutatingAdmissionPolicy, where the cluster has one) or "client" (the approver's kubectl
     sets it; the ValidatingAdmissionPolicy checks it names the requesting user). */}}
{{- define "rewind.actorStamp" -}}
{{- if ne .Values.humanActions.stamp "auto" -}}
{{ .Values.humanActions.stamp }}
{{- else if include "rewind.mutatingAdmissionPolicyAPI" . -}}
server
{{- else -}}
client
{{- end -}}
{{- end }}
