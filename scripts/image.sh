#!/usr/bin/env bash
# Build the project's image: `make image VARIANT=cpu|cuda [TAG=...]`. docker when a daemon answers,
# else buildah (daemonless; `apt-get install buildah debootstrap`), with the Dockerfile's base pulled or,
# where no registry answers, made locally from Debian's packages (scripts/base-image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${VARIANT:-cpu}
TAG=${TAG:-selftrain:$VARIANT}
case "$VARIANT" in cpu|cuda) ;; *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 2 ;; esac

commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit-dirty"

if [ "$VARIANT" = cpu ] && ! python3 - <<'PY'
import urllib.request
urllib.request.urlopen("https://download.pytorch.org/whl/cpu/torch/", timeout=15)
PY
then
  echo "PyTorch's CPU-only index (https://download.pytorch.org/whl/cpu) does not answer from here, and the cpu" >&2
  echo "variant takes torch from it. Build VARIANT=cuda instead (PyPI's torch: larger, runs on CPU too)." >&2
  exit 1
fi

args=(--build-arg "VARIANT=$VARIANT" --build-arg "GIT_COMMIT=$commit" -t "$TAG" .)
start=$(date +%s)
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  docker build "${args[@]}"
  size=$(docker image inspect --format '{{.Size}}' "$TAG")
else
  command -v buildah >/dev/null || { echo "neither a docker daemon nor buildah: apt-get install buildah debootstrap" >&2; exit 1; }
  scripts/base-image.sh
  # The local wheel folders and indexes this machine's pip reads, and the CA bundle it trusts (a TLS
  # proxy's CA among them), mounted read-only and handed to pip in the build: the image installs what pip
  # here would, from where pip here would.
  read -r find_links extra_index cert < <(python3 - <<'PY'
import subprocess
conf = {}  # `pip config list` prints key='value' lines; env (":env:.key") and file ("global.key") settings
for line in subprocess.run(["python3", "-m", "pip", "config", "list"], capture_output=True, text=True).stdout.splitlines():
    key, _, value = line.partition("=")
    conf.setdefault(key.rsplit(".", 1)[-1], []).extend(value.strip("'\"").split())
links = [p for p in conf.get("find-links", []) if not p.startswith(("http:", "https:"))]
index = [u for u in conf.get("extra-index-url", []) if u.startswith("file:")]
cert = conf.get("cert", ["-"])[0]
print(",".join(dict.fromkeys(links)) or "-", ",".join(dict.fromkeys(index)) or "-", cert)
PY
)
  [ "$find_links" = - ] && find_links=""
  [ "$extra_index" = - ] && extra_index=""
  mounts=()
  for p in ${find_links//,/ }; do [ -d "$p" ] && mounts+=(-v "$p:$p:ro"); done
  for u in ${extra_index//,/ }; do
    d=${u#file://}; d=$(dirname "${d%/}")  # an index's file links point beside its simple/ folder
    [ -d "$d" ] && mounts+=(-v "$d:$d:ro")
  done
  pip_cert=""
  if [ "$cert" != - ] && [ -f "$cert" ]; then
    mounts+=(-v "$(dirname "$cert"):/run/host-certs:ro")
    pip_cert=/run/host-certs/$(basename "$cert")
  fi
  buildah bud --layers --isolation chroot --network host "${mounts[@]}" \
    --build-arg "PIP_FIND_LINKS=${find_links//,/ }" --build-arg "PIP_EXTRA_INDEX_URL=${extra_index//,/ }" \
    --build-arg "PIP_CERT=$pip_cert" "${args[@]}"
  size=$(buildah inspect --type image --format '{{.Docker.Size}}' "$TAG" 2>/dev/null || true)
  [ -n "$size" ] && [ "$size" != 0 ] || size=$(buildah images --noheading --format '{{.Size}}' "$TAG")
fi
echo "built $TAG (VARIANT=$VARIANT, GIT_COMMIT=$commit) in $(( $(date +%s) - start )) s, size $size"
