# The project's image: the `selftrain` CLI as entrypoint, the flows and tasks for the Prefect kubernetes pool.
#   make image VARIANT=cpu        (docker when a daemon answers, else buildah: scripts/image.sh)
#   docker build -t selftrain:cpu  --build-arg VARIANT=cpu  --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
#   docker build -t selftrain:cuda --build-arg VARIANT=cuda --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
# Both variants: Debian bookworm's Python 3.11 (pyproject.toml's floor, the one CI tests) in a venv, the
# same pins (constraints.txt), user 10001, and nothing written outside /tmp at run time, so a pod may run it
# with a read-only root filesystem (k8s/README.md).
# cpu:  torch from PyTorch's CPU-only index: no NVIDIA libraries, a much smaller image.
# cuda: torch from PyPI, whose Linux wheels are CUDA builds that bring the NVIDIA runtime libraries as
#       wheels; the base has no CUDA of its own (one copy of each library), and the node's driver is mounted
#       by the NVIDIA container toolkit. It runs on CPU too.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG VARIANT=cpu
# Local wheel folders pip may read during the build, and the CA bundle it should trust (scripts/image.sh
# passes the host pip's, when it has any: behind a TLS proxy, say); empty for a plain docker build.
ARG PIP_FIND_LINKS=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_CERT=
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_HOME=/tmp/prefect MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/cache TORCH_HOME=/tmp/torch

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --no-create-home --home-dir /tmp --uid 10001 --user-group selftrain
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Layers from the least to the most often changed: torch, the other dependencies, then the code, so a
# code change reinstalls neither.
COPY constraints.txt ./
RUN case "$VARIANT" in \
      cpu) index="--index-url https://download.pytorch.org/whl/cpu" ;; \
      cuda) index="" ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install -q $index -c constraints.txt torch torchvision
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -q -c constraints.txt -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY README.md dvc.yaml params.yaml prefect.yaml ./
COPY k8s k8s
COPY selftrain selftrain
COPY tasks tasks
COPY flows flows
# The smoke check runs as root with HOME, PREFECT_HOME and the caches under /tmp: it leaves them there (mode 700,
# root's), and uid 10001 without an emptyDir over /tmp (plain `docker run`) could not create its own. Nothing of it
# stays in the image: /tmp ends as the base left it, empty.
RUN pip install -q --no-deps -e . && selftrain --help >/dev/null && python -c "import flows.self_training" \
    && rm -rf /tmp/* /tmp/.[!.]* && test -z "$(ls -A /tmp)"
# SELFTRAIN_GIT_COMMIT is recorded in every lineage.json written in the image (there is no .git in it).
# Declared last: a new commit only changes this layer.
ARG GIT_COMMIT=unknown
ENV SELFTRAIN_GIT_COMMIT=${GIT_COMMIT}
# Fashion-MNIST is not in the image: point data.source at your folders (s3://...) or mount the Debian files.
# HOME too is under /tmp, the one writable place (with the pods' read-only root filesystem).
ENV HOME=/tmp
USER 10001
ENTRYPOINT ["selftrain"]
CMD ["--help"]
