# The project's image: the `selftrain` CLI as entrypoint, the flows and tasks for the Prefect kubernetes pool.
#   CPU:  docker build -t selftrain:cpu --build-arg VARIANT=cpu .
#   CUDA: docker build -t selftrain:cuda --build-arg VARIANT=cuda .
# SELFTRAIN_GIT_COMMIT is recorded in every lineage.json written in the image (there is no .git in it):
#   docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD) ...
# Both variants run the Python that pyproject.toml's requires-python names as its floor (CI tests that one).
# CUDA: PyPI's Linux torch wheels are CUDA builds that bring the NVIDIA runtime libraries as wheels, so the
# base needs no CUDA of its own; the node's driver is mounted by the NVIDIA container toolkit. CPU: the same
# torch version from PyTorch's CPU-only index, without those libraries (a much smaller image).
ARG VARIANT=cpu
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS base-cpu
ENV TORCH_INDEX_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"

FROM python:${PYTHON}-slim AS base-cuda
ENV TORCH_INDEX_ARGS=""

FROM base-${VARIANT}
ARG GIT_COMMIT=unknown
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SELFTRAIN_GIT_COMMIT=${GIT_COMMIT} PREFECT_SERVER_ANALYTICS_ENABLED=false
WORKDIR /app
# dependencies first (a code change does not reinstall torch)
COPY pyproject.toml constraints.txt README.md ./
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -q --upgrade pip \
    && /opt/venv/bin/pip install -q ${TORCH_INDEX_ARGS} -c constraints.txt torch torchvision
ENV PATH=/opt/venv/bin:$PATH
COPY selftrain selftrain
COPY tasks tasks
COPY flows flows
COPY dvc.yaml params.yaml prefect.yaml ./
COPY k8s k8s
RUN pip install -q -c constraints.txt -e . && selftrain --help >/dev/null
# Fashion-MNIST is not in the image: point data.source at your folders (s3://...) or mount the Debian files.
RUN useradd --create-home --uid 10001 selftrain && chown -R selftrain /app
USER 10001
ENTRYPOINT ["selftrain"]
CMD ["--help"]
