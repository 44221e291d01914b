#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries (and etcd) from Go modules into a cache outside the repo.
# Re-running is cheap: a binary whose --version already matches is kept.
#   usage: hack/build-k8s.sh            (prints the bin directory on its last line)
set -euo pipefail

K8S_VERSION="${TOPODRA_K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${TOPODRA_ETCD_VERSION:-v3.7.0}"
CACHE="${TOPODRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/topodra}"
BIN="$CACHE/k8s/$K8S_VERSION/bin"
LOGS="$CACHE/k8s/$K8S_VERSION/logs"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD="$HERE/k8s-tools"
mkdir -p "$BIN" "$LOGS"

die() { echo "build-k8s: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH: install Go 1.26.x (Kubernetes ${K8S_VERSION} needs it; Go 1.27 builds a broken apiserver)"
GOV="$(GOTOOLCHAIN=local go env GOVERSION)"
case "$GOV" in
  go1.26*) ;;
  *) die "Go $GOV found; Kubernetes ${K8S_VERSION} must be built with Go 1.26.x (see shared/contracts/real-cluster.md)" ;;
esac

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION}"

have() {  # have NAME WANT: the cached binary exists and reports WANT
  local out
  [ -x "$BIN/$1" ] || return 1
  out="$("$BIN/$1" --version 2>/dev/null || "$BIN/$1" version --client 2>/dev/null || true)"
  [[ "$out" == *"$2"* ]]
}

build() {  # build NAME PKG WANT
  local name=$1 pkg=$2 want=$3 start log
  if have "$name" "$want"; then echo "build-k8s: $name $want cached"; return; fi
  log="$LOGS/$name.log"
  start=$(date +%s)
  echo "build-k8s: building $name ($pkg) ..."
  ( cd "$MOD" && go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/$name.tmp" "$pkg" ) >"$log" 2>&1 &
  local pid=$!
  local n=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1; n=$((n + 1))
    if (( n % 30 == 0 )) && kill -0 "$pid" 2>/dev/null; then
      echo "build-k8s:   $name still building, $(( $(date +%s) - start ))s"
    fi
  done
  wait "$pid" || { tail -20 "$log" >&2; die "building $name failed; full log: $log"; }
  mv "$BIN/$name.tmp" "$BIN/$name"
  have "$name" "$want" || die "$name built but does not report $want (log: $log)"
  echo "build-k8s: $name done in $(( $(date +%s) - start ))s"
}

echo "build-k8s: downloading modules ..."
( cd "$MOD" && go mod download ) >"$LOGS/download.log" 2>&1 || { tail -20 "$LOGS/download.log" >&2; die "go mod download failed; log: $LOGS/download.log"; }

# One at a time: two compiles of this size at once can exceed memory on 2 cores.
build etcd ./etcd "${ETCD_VERSION#v}"
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$K8S_VERSION"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$K8S_VERSION"
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$K8S_VERSION"
build kubelet k8s.io/kubernetes/cmd/kubelet "$K8S_VERSION"
build kubectl k8s.io/kubernetes/cmd/kubectl "$K8S_VERSION"
echo "$BIN"
