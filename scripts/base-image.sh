#!/usr/bin/env bash
# The Dockerfile's base image (BASE, default debian:bookworm-slim) in the local image store of
# buildah/podman: pulled where a registry answers, else made here from Debian's own packages
# (debootstrap --variant=minbase, the same suite), committed under the same name, so the
# Dockerfile a user builds elsewhere stays unchanged. A docker daemon pulls for itself: nothing to do.
set -euo pipefail
BASE=${BASE:-debian:bookworm-slim}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  exit 0
fi
if timeout 60 buildah pull -q "docker.io/library/$BASE" >/dev/null 2>&1; then
  echo "pulled $BASE"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "no registry answers and debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
echo "no registry answers: making $BASE from Debian's $SUITE packages ($MIRROR)"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase "$SUITE" "$root/fs" "$MIRROR" >"$root/debootstrap.log" 2>&1 \
  || { tail -20 "$root/debootstrap.log" >&2; exit 1; }
# what the official -slim image leaves out: apt's lists and caches, docs and man pages
rm -rf "$root"/fs/var/lib/apt/lists/* "$root"/fs/var/cache/apt/*.bin "$root"/fs/usr/share/doc/* "$root"/fs/usr/share/man/*
tar -C "$root/fs" -cf "$root/fs.tar" .
ctr=$(buildah from scratch)
buildah add "$ctr" "$root/fs.tar" / >/dev/null
buildah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --label "org.opencontainers.image.description=Debian $SUITE minbase, made by selftrain's scripts/base-image.sh" "$ctr"
buildah commit -q --rm "$ctr" "docker.io/library/$BASE" >/dev/null
echo "made docker.io/library/$BASE ($(buildah inspect --type image --format '{{.Docker.Size}}' "docker.io/library/$BASE" 2>/dev/null || echo '?') bytes)"
