#!/usr/bin/env bash
# topodra on kind with simulated GPUs, in the order kind allows:
#   1. create the cluster (kube-scheduler gets the config directory mounted, not yet --config)
#   2. load the image built by `make image` into every node
#   3. label the workers from the topology file, create the topology ConfigMap
#   4. helm install (the extender pod on the control-plane node writes kube-scheduler's configuration)
#   5. wire kube-scheduler: add --config to its static pod manifest; the kubelet restarts it
#   6. verify: the scheduler is back with the extender in its path; run the example pod
#
# Needs docker, kind (>= 0.27), kubectl, helm (v3), python3 with PyYAML, and the image tarball of
# `make image` (docs/image.md) or IMAGE_TAR. Not run by this repository's CI (no container engine here):
# the same chart, values and scheduler wiring are what tests/integration/test_helm_chart.py renders and
# the local end-to-end tests install on real kubelet + containerd nodes; keep this file in step with them.
#
#   hack/kind/up.sh            create, install, wire, verify
#   hack/kind/up.sh down       delete the cluster
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CLUSTER=kind                       # the topology file names kind-worker, kind-worker2
NS=topodra-system
RELEASE=topodra
CP="${CLUSTER}-control-plane"
VERSION="$(python3 -c 'import re,sys; print(re.search(r"appVersion: \"?([^\"\n]+)", open(sys.argv[1]).read()).group(1))' "$ROOT/deploy/helm/topodra/Chart.yaml")"
IMAGE="ghcr.io/topodra/topodra:${VERSION}"
IMAGE_TAR="${IMAGE_TAR:-${XDG_CACHE_HOME:-$HOME/.cache}/topodra/image/topodra-${VERSION}.oci.tar}"
TOPOLOGY="$ROOT/deploy/examples/topology-kind.yaml"

if [[ "${1:-}" == down ]]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

step() { printf '\n== %s\n' "$*"; }

step "1. kind cluster"
kind create cluster --name "$CLUSTER" --config "$HERE/cluster.yaml" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s

step "2. image $IMAGE from $IMAGE_TAR"
[[ -f "$IMAGE_TAR" ]] || { echo "no $IMAGE_TAR: run 'make image' first (docs/image.md)" >&2; exit 1; }
kind load image-archive "$IMAGE_TAR" --name "$CLUSTER"

step "3. topology labels and ConfigMap"
# The file's node labels (rack, block, zone, NVLink clique) plus the label the driver's nodeSelector wants.
python3 - "$TOPOLOGY" <<'PY' | while read -r node labels; do kubectl label node "$node" $labels --overwrite; done
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for n in doc["nodes"]:
    labels = dict(n.get("labels") or {}, **{"topodra.dev/simulated-gpus": "true"})
    print(n["name"], " ".join(f"{k}={v}" for k, v in labels.items()))
PY
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=privileged --overwrite
kubectl -n "$NS" create configmap topodra-topology --from-file=topology.yaml="$TOPOLOGY" \
  --dry-run=client -o yaml | kubectl apply -f -

step "4. helm install"
helm upgrade --install "$RELEASE" "$ROOT/deploy/helm/topodra" -n "$NS" -f "$HERE/values-fake-gpus.yaml" \
  --set image.pullPolicy=Never --wait --timeout 5m
kubectl -n "$NS" rollout status ds/"$RELEASE"-extender --timeout 3m
docker exec "$CP" ls -l /etc/kubernetes/topodra/

step "5. wire kube-scheduler (--config)"
MANIFEST=/etc/kubernetes/manifests/kube-scheduler.yaml
if ! docker exec "$CP" grep -q -- '--config=/etc/kubernetes/topodra/kube-scheduler-config.yaml' "$MANIFEST"; then
  # Edited outside the manifests directory and moved back in one step: the kubelet never sees half a file.
  docker exec "$CP" sh -c "sed 's#^\( *\)- kube-scheduler\$#&\n\1- --config=/etc/kubernetes/topodra/kube-scheduler-config.yaml#' $MANIFEST > /etc/kubernetes/kube-scheduler.yaml.new && mv /etc/kubernetes/kube-scheduler.yaml.new $MANIFEST"
fi
docker exec "$CP" grep -n -- '--config' "$MANIFEST"
# The kubelet replaces the static pod; wait for a new kube-scheduler that holds the Lease again.
before="$(kubectl -n kube-system get lease kube-scheduler -o jsonpath='{.spec.holderIdentity}')"
for _ in $(seq 1 90); do
  now="$(kubectl -n kube-system get lease kube-scheduler -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)"
  [[ -n "$now" && "$now" != "$before" ]] && break
  sleep 2
done
echo "kube-scheduler lease holder: ${now:-?} (was $before)"
kubectl -n kube-system wait pod -l component=kube-scheduler --for=condition=Ready --timeout 120s

step "6. verify"
kubectl -n "$NS" rollout status ds/"$RELEASE"-driver --timeout 3m
kubectl get resourceslices --field-selector spec.driver=topodra.dev
kubectl apply -f "$ROOT/deploy/examples/claims/gpu-nic-pcie-aligned.yaml"
kubectl delete pod aligned-pair --ignore-not-found --wait
kubectl apply -f "$HERE/example-pod.yaml"
kubectl wait pod aligned-pair --for=jsonpath='{.status.phase}'=Succeeded --timeout 180s
kubectl logs aligned-pair
# The placement went through the extender (host network on the control-plane node): its calls are counted.
docker exec "$CP" curl -sk https://127.0.0.1:8443/metrics | grep -E '^topodra_extender_requests_total'
docker exec "$CP" curl -sk https://127.0.0.1:8443/metrics | grep -q 'topodra_extender_requests_total{.*verb="filter"'
echo "topodra is running on kind; hack/kind/up.sh down deletes the cluster"
