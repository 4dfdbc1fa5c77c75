#!/usr/bin/env bash
# Build the gateway image without any container registry:
#   1. debootstrap a minimal Debian (bookworm: python3 3.11) root file system,
#   2. import it into buildah's local storage as the base image,
#   3. `buildah build` the repository's Dockerfile on it (multi-stage, BASE_IMAGE build arg).
# Uses buildah with the vfs storage driver and chroot isolation (works as root in a plain
# VM or unprivileged container host, no overlayfs / user namespaces needed). PyPI and the
# Debian mirror must be reachable (pip and apt run inside the build).
#
#   scripts/build-image.sh                 # -> localhost/payment-gateway:latest
#   IMAGE=localhost/payment-gateway:dev REBUILD_BASE=1 scripts/build-image.sh
#
# Then: scripts/run-image-check.sh runs the image to a passing /healthz and one payment.
# Needs root and the Debian packages buildah and debootstrap
# (apt-get install -y --no-install-recommends buildah debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/payment-gateway:latest}
BASE_IMAGE=${BASE_IMAGE:-localhost/gateway-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORKDIR=${WORKDIR:-/var/tmp/gateway-image}
REBUILD_BASE=${REBUILD_BASE:-0}
BUILDAH=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
export BUILDAH_ISOLATION=chroot

log() { printf '%s build-image: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || {
    echo "build-image: $tool is missing (apt-get install -y --no-install-recommends buildah debootstrap)" >&2
    exit 1
  }
done
[ "$(id -u)" = 0 ] || { echo "build-image: run as root (debootstrap, buildah vfs)" >&2; exit 1; }

start=$(date +%s)
if [ "$REBUILD_BASE" = 1 ] || ! "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  rootfs="$WORKDIR/rootfs-$SUITE"
  rm -rf "$rootfs"
  mkdir -p "$WORKDIR"
  log "debootstrap $SUITE (minbase + python3) into $rootfs from $MIRROR"
  debootstrap --variant=minbase --include=python3,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$WORKDIR/debootstrap.log" 2>&1 || {
      tail -n 30 "$WORKDIR/debootstrap.log" >&2; exit 1; }
  # Keep the base small and reproducible-ish: no package lists, caches or logs.
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
         "$rootfs"/var/log/*.log "$rootfs"/tmp/* "$rootfs"/dev/* "$rootfs"/proc/* "$rootfs"/sys/*
  tar -C "$rootfs" --numeric-owner -cf "$WORKDIR/rootfs-$SUITE.tar" .
  log "importing the root file system as $BASE_IMAGE"
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" add "$ctr" "$WORKDIR/rootfs-$SUITE.tar" / >/dev/null
  "${BUILDAH[@]}" config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash \
    --label "org.opencontainers.image.description=Debian $SUITE minbase + python3 (debootstrap)" \
    "$ctr"
  "${BUILDAH[@]}" commit --rm "$ctr" "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs" "$WORKDIR/rootfs-$SUITE.tar"
else
  log "base image $BASE_IMAGE exists (REBUILD_BASE=1 to rebuild it)"
fi

# pip inside the build trusts the CA bundle pip trusts on this host (PIP_CERT, else the system
# bundle): needed behind a TLS-intercepting proxy. Passed as a build secret, not a layer.
PIP_CA=${PIP_CA:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
secret=()
[ -s "$PIP_CA" ] && secret=(--secret "id=pip_ca,src=$PIP_CA")

previous=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)
log "building $IMAGE from Dockerfile (BASE_IMAGE=$BASE_IMAGE)"
# --format docker: the OCI image format has no HEALTHCHECK field.
"${BUILDAH[@]}" build --isolation chroot --format docker --pull=never "${secret[@]}" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" -f Dockerfile .

# vfs keeps full copies: drop the image this build replaced (unless a container uses it).
current=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  "${BUILDAH[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi
"${BUILDAH[@]}" images "$IMAGE"
"${BUILDAH[@]}" inspect --type image \
  --format 'user={{.Docker.Config.User}} entrypoint={{.Docker.Config.Entrypoint}} cmd={{.Docker.Config.Cmd}} volumes={{.Docker.Config.Volumes}} healthcheck={{.Docker.Config.Healthcheck.Test}}' \
  "$IMAGE"
echo
log "done in $(( $(date +%s) - start ))s: $IMAGE"
