#!/usr/bin/env bash
# Installs (or reuses) the chart tools the chart tests run: helm and kubeconform, built from the Go module proxy
# with `go install` into a versioned directory of the cache (outside the git tree), and linked from .local/bin.
#
# Usage: hack/chart/tools.sh      prints "helm <path>" and "kubeconform <path>" on stdout
#   env TOOLS_CACHE  cache root (default $HOME/.cache/vkprovider/tools)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${TOOLS_CACHE:-$HOME/.cache/vkprovider/tools}"
HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.8.0
log() { echo "chart/tools.sh: $*" >&2; }

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

install_tool() { # name version package
  local dir="$cache/$1-$2"
  if [[ ! -x "$dir/$1" ]]; then
    command -v go >/dev/null || { log "go is needed to install $1 (go install $3@$2)"; exit 1; }
    log "installing $1 $2 (go install $3@$2) ..."
    mkdir -p "$dir.tmp"
    GOBIN="$dir.tmp" GOFLAGS="-trimpath" go install "$3@$2" >&2
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  mkdir -p "$repo/.local/bin" && ln -sfn "$dir/$1" "$repo/.local/bin/$1"
  echo "$1 $dir/$1"
}

install_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
install_tool kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform
