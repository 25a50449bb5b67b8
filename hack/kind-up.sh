#!/usr/bin/env bash
# Rewind on a real (kind) cluster, for users with Docker: kind + Istio + kube-prometheus-stack
# + the operator image + the Helm chart + an example release.
#
# NOTE: this script was written without Docker and has NOT been run by the test suite (the
# development sandbox, hack/sandbox, has no container runtime: it fakes pods with kwok). The
# tested path is the chart itself (tests/sandbox/test_chart.py).
#
# Needs: docker, kind, kubectl, helm (v3). Safe to re-run (everything is create-or-upgrade).
# Istio: base, istiod and an ingress gateway with the Gateway the examples name
# (examples/istio/public-gateway.yaml).
#   hack/kind-up.sh            # cluster "rewind"
#   CLUSTER=dev hack/kind-up.sh
#   kind delete cluster --name rewind   # tear down
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-rewind}
IMAGE=${IMAGE:-rewind-operator:dev}
# Istio's Helm charts, same minor as the Istio API the sandbox pins (hack/versions.env).
ISTIO_VERSION=${ISTIO_VERSION:-$(sed -n 's/^ISTIO_API_VERSION=v//p' hack/versions.env)}
KPS_VERSION=${KPS_VERSION:-}   # kube-prometheus-stack chart version; empty = latest
EXAMPLE_NS=${EXAMPLE_NS:-rewind-demo}

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind-up: $tool is required" >&2; exit 1; }
done
say() { printf '\n==> %s\n' "$*"; }

say "kind cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

say "Istio $ISTIO_VERSION (base + istiod)"
helm repo add istio https://istio-release.storage.googleapis.com/charts --force-update >/dev/null
helm upgrade --install istio-base istio/base --version "$ISTIO_VERSION" \
  -n istio-system --create-namespace --wait
helm upgrade --install istiod istio/istiod --version "$ISTIO_VERSION" \
  -n istio-system --wait
# The ingress gateway and the Gateway the examples route through (istio-system/public).
helm upgrade --install istio-ingressgateway istio/gateway --version "$ISTIO_VERSION" \
  -n istio-system --wait
kubectl apply -f examples/istio/public-gateway.yaml

say "kube-prometheus-stack (Prometheus picks up every ServiceMonitor/PodMonitor/PrometheusRule)"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts \
  --force-update >/dev/null
helm upgrade --install kps prometheus-community/kube-prometheus-stack \
  ${KPS_VERSION:+--version "$KPS_VERSION"} -n monitoring --create-namespace --wait \
  --set grafana.enabled=false \
  --set alertmanager.enabled=false \
  --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
  --set prometheus.prometheusSpec.podMonitorSelectorNilUsesHelmValues=false \
  --set prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false
# Istio's request metrics (istio_requests_total, ...) come from the sidecars: scrape them.
kubectl apply -f - <<'EOF'
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: envoy-stats
  namespace: istio-system
spec:
  namespaceSelector: {any: true}
  selector:
    matchExpressions:
      - {key: istio-prometheus-ignore, operator: DoesNotExist}
  jobLabel: envoy-stats
  podMetricsEndpoints:
    - path: /stats/prometheus
      interval: 15s
      relabelings:
        - action: keep
          sourceLabels: [__meta_kubernetes_pod_container_name]
          regex: istio-proxy
        - action: keep
          sourceLabels: [__meta_kubernetes_pod_annotationpresent_prometheus_io_scrape]
        - action: replace
          sourceLabels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
          regex: ([^:]+)(?::\d+)?;(\d+)
          replacement: $1:$2
          targetLabel: __address__
        - action: replace
          sourceLabels: [__meta_kubernetes_namespace]
          targetLabel: namespace
        - action: replace
          sourceLabels: [__meta_kubernetes_pod_name]
          targetLabel: pod
EOF

say "operator image $IMAGE"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

say "Rewind chart"
# prometheus-operated is the Service the Prometheus operator creates for every Prometheus.
helm upgrade --install rewind charts/rewind -n rewind-system --create-namespace --wait \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
  --set image.pullPolicy=Never \
  --set prometheus.url=http://prometheus-operated.monitoring.svc:9090 \
  --set serviceMonitor.enabled=true --set prometheusRule.enabled=true
# Helm installs CRDs only on the first install; keep them current on re-runs.
kubectl apply --server-side --force-conflicts -f charts/rewind/crds/

say "example: fraud-detection canary in namespace $EXAMPLE_NS"
kubectl create namespace "$EXAMPLE_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$EXAMPLE_NS" istio-injection=enabled --overwrite
# The example's images are placeholders (registry.example.com): point spec.code.image at
# your model server (pinned by digest) to see traffic shift; as is, the revision never
# becomes Available and the release fails after its progressDeadline.
kubectl apply -n "$EXAMPLE_NS" -f examples/fraud-detection-canary.yaml

cat <<EOF

Done. Try:
  kubectl get mr -n $EXAMPLE_NS -w
  kubectl logs -n rewind-system deploy/rewind -f
  kubectl port-forward -n monitoring svc/prometheus-operated 9090   # then http://localhost:9090/alerts
EOF
