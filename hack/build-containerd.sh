#!/usr/bin/env bash
# Builds containerd 2.x (CDI always on; Debian 12's 1.6 has none), ctr and the runc v2 shim from Go
# modules into a cache outside the repo. runc itself comes from Debian (`make apt`).
# Re-running is cheap: a binary whose version already matches is kept.
#   usage: hack/build-containerd.sh     (prints the bin directory on its last line)
set -euo pipefail

CONTAINERD_VERSION="${TOPODRA_CONTAINERD_VERSION:-v2.4.2}"
CACHE="${TOPODRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/topodra}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOL=build-containerd
MOD="$HERE/containerd-tools"
BIN="$CACHE/containerd/$CONTAINERD_VERSION/bin"
LOGS="$CACHE/containerd/$CONTAINERD_VERSION/logs"
PKG=github.com/containerd/containerd/v2
LDFLAGS="-s -w -X $PKG/version.Version=${CONTAINERD_VERSION} -X $PKG/version.Revision=topodra"
# No btrfs/devmapper/zfs snapshotters: they need cgo headers and the tests use overlayfs.
TAGS="no_btrfs no_devmapper no_zfs"
# shellcheck source=lib/gobuild.sh
. "$HERE/lib/gobuild.sh"

# The shim has no --version; it prints its version with -v.
have() {  # have NAME WANT
  local out
  [ -x "$BIN/$1" ] || return 1
  out="$("$BIN/$1" --version 2>/dev/null || "$BIN/$1" -v 2>/dev/null || true)"
  [[ "$out" == *"$2"* ]]
}

want="$(sed -n "s|^require $PKG ||p; s|^\t$PKG ||p" "$MOD/go.mod" | head -1)"
[ "$want" = "$CONTAINERD_VERSION" ] \
  || die "hack/containerd-tools/go.mod pins containerd ${want:-?}, not $CONTAINERD_VERSION (edit go.mod and run go mod tidy)"

gobuild_init go1.26 "containerd ${CONTAINERD_VERSION} (its go.mod wants Go >= 1.26.6)"
download_modules
build containerd "$PKG/cmd/containerd" "$CONTAINERD_VERSION" "$TAGS"
build containerd-shim-runc-v2 "$PKG/cmd/containerd-shim-runc-v2" "$CONTAINERD_VERSION" "$TAGS"
build ctr "$PKG/cmd/ctr" "$CONTAINERD_VERSION" "$TAGS"
for tool in runc:runc busybox:busybox-static /usr/lib/cni/loopback:containernetworking-plugins; do
  command -v "${tool%%:*}" >/dev/null 2>&1 \
    || echo "$TOOL: warning: ${tool%%:*} not found; the real-node tests need Debian's ${tool#*:} (make apt)" >&2
done
echo "$BIN"
