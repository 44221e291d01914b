//go:build tools

// Package tools pins the containerd commands that hack/build-containerd.sh builds
// (containerd 2.x: CDI always on; Debian 12's 1.6 has none).
// The build tag keeps it out of every build; it only feeds `go mod tidy`.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
