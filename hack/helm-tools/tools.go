//go:build tools

// Package tools pins the helm command that hack/build-helm.sh builds (to render and validate the chart).
package tools

import _ "helm.sh/helm/v3/cmd/helm"
