#!/usr/bin/env bash
# Builds (or reuses) "kcp", the multi-call binary holding the real Kubernetes control plane
# (etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl) that every vkprovider
# test and `make cluster` run. A cold build takes minutes on 2 cores, so the binary lives in a
# cache OUTSIDE the git tree and is rebuilt only when main.go / go.mod / go.sum or the build
# recipe change (sha256 stamp next to the binary). A fresh clone on the same machine reuses it.
#
# Usage: build.sh [K8S_VERSION]   (default: contents of hack/controlplane/VERSION)
#   env KCP_CACHE  cache root (default $HOME/.cache/vkprovider); binary: $KCP_CACHE/bin/v$VER/kcp
#   env FORCE=1    rebuild even when the stamp matches
# Prints the binary path on stdout (the only stdout line); progress and timing go to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
ver="${1:-$(tr -d '[:space:]' < "$here/VERSION")}"
ver="${ver#v}"
cache="${KCP_CACHE:-$HOME/.cache/vkprovider}"
out_dir="$cache/bin/v$ver"
bin="$out_dir/kcp"
stamp="$out_dir/kcp.stamp"
log() { echo "build.sh: $*" >&2; }
start=$(date +%s)

mkdir -p "$out_dir"
exec 9>"$out_dir/.lock"
flock 9 # one build at a time per version; a second caller waits, then finds the stamp current

# The module to build: the committed one, or a scratch copy re-pinned to another release.
committed_ver=$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes v\([0-9.]*\)$/\1/p; s/^require k8s.io\/kubernetes v\([0-9.]*\)$/\1/p' \
  "$here/go.mod" | head -n1)
if [[ "$ver" == "$committed_ver" ]]; then
  src="$here"
else
  src="$cache/src/v$ver"
  mkdir -p "$src"
  if ! cmp -s "$here/main.go" "$src/main.go" || [[ ! -s "$src/go.mod" ]]; then
    log "re-pinning the module to Kubernetes v$ver in $src (committed go.mod is v${committed_ver:-?})"
    cp "$here/main.go" "$here/gen-gomod.sh" "$src/"
    bash "$src/gen-gomod.sh" "$ver" "$src" >&2
  fi
fi

minor="${ver#*.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$ver -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
recipe="go build -trimpath -ldflags '$ldflags'"
want=$( { echo "$ver"; echo "$recipe"; cat "$src/main.go" "$src/go.mod" "$src/go.sum"; } | sha256sum | cut -d' ' -f1)

# Adopt a binary built in-tree by hand (.local/bin/vX.Y.Z/kcp, the bootstrap build) instead of rebuilding.
legacy="$repo/.local/bin/v$ver/kcp"
if [[ ! -x "$bin" && -x "$legacy" && ! -L "$repo/.local/bin/v$ver" && "$src" == "$here" ]]; then
  log "adopting the existing in-tree build $legacy"
  cp "$legacy" "$bin.tmp" && mv "$bin.tmp" "$bin"
  echo "$want" > "$stamp"
  rm -f "$legacy" && rmdir "$repo/.local/bin/v$ver" 2>/dev/null || true # replaced by the link below
fi

if [[ "${FORCE:-0}" != 1 && -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  log "kcp v$ver is up to date ($bin)"
else
  log "building kcp for Kubernetes v$ver (cold: several minutes on 2 cores) ..."
  (cd "$src" && go build -trimpath -ldflags "$ldflags" -o "$bin.tmp" .)
  mv "$bin.tmp" "$bin"
  echo "$want" > "$stamp"
fi

# Convenience link inside the tree (ignored by git): .local/bin/vX.Y.Z -> the cache dir.
if [[ ! -e "$repo/.local/bin/v$ver" || -L "$repo/.local/bin/v$ver" ]]; then
  mkdir -p "$repo/.local/bin" && ln -sfn "$out_dir" "$repo/.local/bin/v$ver"
fi
log "done in $(( $(date +%s) - start ))s"
echo "$bin"
