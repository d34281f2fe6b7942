#!/usr/bin/env bash
# Builds (or reuses) vkprovider's container image from the repo's Containerfile with podman, tagged
# localhost/vkprovider:<version> (version from vkprovider/__init__.py) and localhost/vkprovider:latest.
#
# The base: BASE_IMAGE when set (e.g. python:3.11-slim, pulled from a registry). Otherwise a Debian bookworm
# minbase with python3 + python3-venv made here with debootstrap (no registry is needed: the packages come
# from the Debian mirror), cached as a tarball in $IMAGE_CACHE and imported into podman once.
#
# The image is rebuilt only when its inputs change: the label dev.vkprovider.inputs is a sha256 over the
# Containerfile, .dockerignore, pyproject.toml, README.md, every file under vkprovider/ (no caches), the
# version and the base image id. A current image makes this a no-op (about a second).
#
# Usage: hack/image/build.sh        prints the image reference on stdout (the only stdout line)
#   env BASE_IMAGE     base image reference (default: the local debootstrap base)
#   env IMAGE_NAME     repository (default localhost/vkprovider)
#   env IMAGE_SOURCE   value of the org.opencontainers.image.source label (default: git's remote.origin.url)
#   env IMAGE_CACHE    cache dir (default $HOME/.cache/vkprovider/images)
#   env DEBIAN_MIRROR  mirror for debootstrap (default http://deb.debian.org/debian)
#   env PIP_CA         CA bundle pip inside the build trusts (default: $PIP_CERT or $SSL_CERT_FILE when set:
#                      a TLS-inspecting proxy's CA). Passed as a build secret, so it is in no layer.
#   env FORCE=1        rebuild even when the image is current
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${IMAGE_CACHE:-$HOME/.cache/vkprovider/images}"
name="${IMAGE_NAME:-localhost/vkprovider}"
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/vkprovider/__init__.py")"
log() { echo "image/build.sh: $*" >&2; }
start=$(date +%s)

[[ -n "$version" ]] || { log "no __version__ in vkprovider/__init__.py"; exit 1; }
if ! command -v podman >/dev/null; then
  log "podman is not installed: 'make image-deps' (or apt-get install podman debootstrap) installs it"
  exit 1
fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one build at a time; a second caller waits, then finds the image current

# ---------------------------------------------------------------------------------------------- the base
suite=bookworm
packages=python3,python3-venv,ca-certificates
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
recipe="debootstrap --variant=minbase --include=$packages $suite; slim v1"
rid="$(echo "$recipe" | sha256sum | cut -c1-12)"
root=""
cleanup() {
  if [[ -n "$root" && -d "$root" ]]; then
    # debootstrap mounts proc/sys in the target; never delete through a mount that is still there
    awk -v r="$root" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l || true
    rm -rf --one-file-system "$root"
  fi
}
trap cleanup EXIT

if [[ -n "${BASE_IMAGE:-}" ]]; then
  base="$BASE_IMAGE"
  podman image exists "$base" || podman pull "$base" >&2
else
  base="localhost/vkprovider-base:$suite-$rid"
  tarball="$cache/debian-$suite-python3-$rid.tar"
  if ! podman image exists "$base"; then
    if [[ ! -s "$tarball" ]]; then
      command -v debootstrap >/dev/null || { log "debootstrap is not installed: run 'make image-deps'"; exit 1; }
      log "making the base: debootstrap $suite minbase + $packages from $mirror (about 2 minutes) ..."
      root="$(mktemp -d "$cache/rootfs.XXXXXX")"
      debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" > "$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; log "debootstrap failed (log: $cache/debootstrap.log)"; exit 1; }
      # slim, as Debian's own -slim images: no package caches, lists, docs (copyrights kept), man pages, locales
      rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
             "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*.log
      find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
      : > "$root/etc/resolv.conf"  # the runtime provides these
      : > "$root/etc/hostname"
      printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
      tar --numeric-owner --sort=name -C "$root" -cf "$tarball.tmp" .
      mv "$tarball.tmp" "$tarball"
      cleanup
      root=""
    fi
    log "importing $tarball as $base"
    podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$tarball" "$base" > "$cache/import.log" 2>&1 \
      || { cat "$cache/import.log" >&2; exit 1; }
  fi
fi
base_id="$(podman image inspect --format '{{.Id}}' "$base")"

# -------------------------------------------------------------------------------------------- the inputs
inputs="$(
  cd "$repo"
  {
    printf '%s\n' Containerfile .dockerignore pyproject.toml README.md
    find vkprovider -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort
  } | while read -r f; do printf '%s %s\n' "$(sha256sum < "$f" | cut -d' ' -f1)" "$f"; done
  echo "version $version"
  echo "base $base_id"
)"
want="$(echo "$inputs" | sha256sum | cut -d' ' -f1)"
have="$(podman image inspect --format '{{index .Labels "dev.vkprovider.inputs"}}' "$name:$version" 2>/dev/null || true)"
if [[ "${FORCE:-0}" != 1 && "$have" == "$want" ]]; then
  podman tag "$name:$version" "$name:latest"
  log "$name:$version is up to date ($(( $(date +%s) - start ))s)"
  echo "$name:$version"
  exit 0
fi

# ------------------------------------------------------------------------------------------------ build
old_id="$(podman image inspect --format '{{.Id}}' "$name:$version" 2>/dev/null || true)"
source_url="${IMAGE_SOURCE-$(git -C "$repo" config --get remote.origin.url 2>/dev/null || true)}"
ca="${PIP_CA:-${PIP_CERT:-${SSL_CERT_FILE:-}}}"
secret=()
[[ -n "$ca" && -s "$ca" ]] && secret=(--secret "id=pip-ca,src=$ca")
log "building $name:$version on $base ..."
podman build --isolation chroot --layers -f "$repo/Containerfile" "${secret[@]}" \
  --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" --build-arg "SOURCE=$source_url" \
  --label "dev.vkprovider.inputs=$want" -t "$name:$version" -t "$name:latest" "$repo" > "$cache/build.log" 2>&1 \
  || { tail -30 "$cache/build.log" >&2; log "podman build failed (log: $cache/build.log)"; exit 1; }
new_id="$(podman image inspect --format '{{.Id}}' "$name:$version")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
  podman rmi "$old_id" >/dev/null 2>&1 || true  # the previous build, now untagged
fi
# cached builder-stage layers older than a day (the current ones stay, for the next build)
podman image prune -f --filter label=dev.vkprovider.stage=builder --filter until=24h >/dev/null 2>&1 || true
size="$(podman image inspect --format '{{.Size}}' "$name:$version")"
log "built $name:$version ($(( size / 1000000 )) MB) in $(( $(date +%s) - start ))s"
echo "$name:$version"
