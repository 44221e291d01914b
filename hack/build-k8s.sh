#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries (and etcd) from Go modules into a cache outside the repo.
# Re-running is cheap: a binary whose --version already matches is kept.
#   usage: hack/build-k8s.sh            (prints the bin directory on its last line)
set -euo pipefail

K8S_VERSION="${TOPODRA_K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${TOPODRA_ETCD_VERSION:-v3.7.0}"
CACHE="${TOPODRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/topodra}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOL=build-k8s
MOD="$HERE/k8s-tools"
BIN="$CACHE/k8s/$K8S_VERSION/bin"
LOGS="$CACHE/k8s/$K8S_VERSION/logs"
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION}"
# shellcheck source=lib/gobuild.sh
. "$HERE/lib/gobuild.sh"

gobuild_init go1.26 "Kubernetes ${K8S_VERSION} (Go 1.27 builds a broken apiserver)"
download_modules
# One at a time: two compiles of this size at once can exceed memory on 2 cores.
build etcd ./etcd "${ETCD_VERSION#v}"
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$K8S_VERSION"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$K8S_VERSION"
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$K8S_VERSION"
build kubelet k8s.io/kubernetes/cmd/kubelet "$K8S_VERSION"
build kubectl k8s.io/kubernetes/cmd/kubectl "$K8S_VERSION"
echo "$BIN"
