#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3.11 without any container registry:
# debootstrap a root filesystem from Debian's package mirror and load it with `docker import`.
# Usage: images/base/build-local-base.sh [IMAGE_TAG]   (default codex-agent-base:bookworm)
# Idempotent: does nothing when the image already exists (set REBUILD=1 to force).
set -euo pipefail

tag="${1:-codex-agent-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ "${REBUILD:-0}" != 1 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag already present"
    exit 0
fi

command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }

rootfs="$(mktemp -d /var/tmp/codex-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates,tini \
    bookworm "$rootfs" "$mirror"

# Keep the image small: no package lists or caches.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb

tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$tag"
echo "built base image $tag"
