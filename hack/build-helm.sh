#!/usr/bin/env bash
# Builds helm (to render and validate deploy/helm/topodra in tests) from Go modules into the cache.
#   usage: hack/build-helm.sh           (prints the bin directory on its last line)
set -euo pipefail

HELM_VERSION="${TOPODRA_HELM_VERSION:-v3.22.0}"
CACHE="${TOPODRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/topodra}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOL=build-helm
MOD="$HERE/helm-tools"
BIN="$CACHE/helm/$HELM_VERSION/bin"
LOGS="$CACHE/helm/$HELM_VERSION/logs"
LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
# shellcheck source=lib/gobuild.sh
. "$HERE/lib/gobuild.sh"

gobuild_init go1.26 "helm ${HELM_VERSION}"
download_modules
build helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
echo "$BIN"
