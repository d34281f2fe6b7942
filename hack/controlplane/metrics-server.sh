#!/usr/bin/env bash
# Installs (or reuses) metrics-server, built from the Go module proxy with `go install` into a versioned directory
# of the cache (outside the git tree), linked from .local/bin. `localcluster.py metrics-server` runs it against the
# local control plane (kubectl top; docs/operations.md "kubectl top").
#
# Usage: hack/controlplane/metrics-server.sh               prints the binary's path on stdout
#        hack/controlplane/metrics-server.sh --installed   the same if it is installed, else exits 3 (builds nothing)
#   env TOOLS_CACHE  cache root (default $HOME/.cache/vkprovider/tools)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOOLS_CACHE:-$HOME/.cache/vkprovider/tools}"
VERSION=v0.8.0
PACKAGE=sigs.k8s.io/metrics-server/cmd/metrics-server
log() { echo "metrics-server.sh: $*" >&2; }

mkdir -p "$cache"
exec 9>"$cache/.lock-metrics-server"
flock 9

dir="$cache/metrics-server-$VERSION"
if [[ ! -x "$dir/metrics-server" && "${1:-}" == "--installed" ]]; then
  exit 3
fi
if [[ ! -x "$dir/metrics-server" ]]; then
  command -v go >/dev/null || { log "go is needed to install metrics-server (go install $PACKAGE@$VERSION)"; exit 1; }
  log "installing metrics-server $VERSION (go install $PACKAGE@$VERSION, a few minutes the first time) ..."
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  GOBIN="$dir.tmp" GOFLAGS="-trimpath" go install "$PACKAGE@$VERSION" >&2
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
mkdir -p "$repo/.local/bin" && ln -sfn "$dir/metrics-server" "$repo/.local/bin/metrics-server"
echo "$dir/metrics-server"
