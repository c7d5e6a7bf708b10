#!/usr/bin/env bash
# Build the respan-gateway image with buildah: no Docker engine and no registry but Debian's mirror and
# PyPI needed (docs/deploy.md). Idempotent: the Debian base is made once with debootstrap and kept as
# a local image; the image's layers are cached, so a second run with no change takes seconds.
#
#   deploy/build-image.sh                         build localhost/respan-gateway:latest on the Debian base
#   BASE_IMAGE=docker.io/library/python:3.11-slim deploy/build-image.sh     on another base, pulled as is
#
# Environment: IMAGE (the tag to build), BASE_IMAGE (default: the debootstrapped base below),
# DEBIAN_SUITE (bookworm: python3 3.11), DEBIAN_MIRROR. Prints the image size last.
# Runs as root (buildah's chroot isolation, debootstrap); needs buildah, and debootstrap for the base.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/respan-gateway:latest}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_BASE=localhost/respan-base-debian:$DEBIAN_SUITE
BASE_IMAGE=${BASE_IMAGE:-$DEBIAN_BASE}
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

build_debian_base() {
  echo "build-image: making the base $DEBIAN_BASE with debootstrap ($DEBIAN_SUITE from $DEBIAN_MIRROR)"
  local root ctr mnt
  root=$(mktemp -d /var/tmp/respan-base.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  # minbase + python3 (3.11 on bookworm) + python3-venv (the build stage makes a venv with pip).
  debootstrap --variant=minbase --include=python3,python3-venv "$DEBIAN_SUITE" "$root/rootfs" "$DEBIAN_MIRROR" \
    >"$root/debootstrap.log" 2>&1 || { tail -n 30 "$root/debootstrap.log" >&2; return 1; }
  # What a container never uses: downloaded packages, package lists, docs, man pages, translations.
  rm -rf "$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/var/lib/apt/lists/* \
         "$root"/rootfs/usr/share/doc/* "$root"/rootfs/usr/share/man/* "$root"/rootfs/usr/share/locale/* \
         "$root"/rootfs/usr/share/info/*
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  cp -a "$root/rootfs/." "$mnt/"
  buildah umount "$ctr" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd python3 --label "org.opencontainers.image.description=Debian $DEBIAN_SUITE minbase with python3" "$ctr"
  buildah commit --quiet --rm "$ctr" "$DEBIAN_BASE" >/dev/null
}

if [ "$BASE_IMAGE" = "$DEBIAN_BASE" ] && ! have_image "$DEBIAN_BASE"; then
  build_debian_base
fi

echo "build-image: building $IMAGE on $BASE_IMAGE"
# --format docker keeps the HEALTHCHECK (OCI images have none); --layers: every step is cached in buildah's storage; --pull-never for the local Debian base.
pull=--pull
[ "$BASE_IMAGE" = "$DEBIAN_BASE" ] && pull=--pull-never
# pip inside the build uses the host's CA bundle (PIP_CERT, or the system's) and index (PIP_INDEX_URL) if set:
# a machine behind a TLS-inspecting proxy needs them. Mounted for the RUN steps only: nothing stays in the image.
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$ca" ]; then
  build_args+=(--volume "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
[ -n "${PIP_INDEX_URL:-}" ] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
buildah build --format docker --layers "$pull" --isolation "$BUILDAH_ISOLATION" "${build_args[@]}" \
  -f Dockerfile -t "$IMAGE" . >&2

echo "build-image: $IMAGE is $(buildah images --format '{{.Size}}' "$IMAGE" | head -n1) (uncompressed)"
