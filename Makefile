# `make run`: set up, then self-training on Fashion-MNIST through DVC (every generation in params.yaml).
# `make test`: set up, then the whole test suite (what CI runs).
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Prefect's temporary server: allow a slow first start, send no telemetry.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup run test flow server worker bench image

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh
	touch $@

# --keep-going: when a gate stops the chain, the generations before it still get their reports.
# `selftrain summary` prints the table and sets the exit status: 0 when every generation finished or a
# gate stopped the chain (dvc then reports the next generation's `infer` as failed: that is the stop),
# 1 when a generation failed for another reason.
# UNTIL=gen1: only the generations up to that one.
run: setup
	-dvc repro --keep-going $(if $(UNTIL),report@$(UNTIL) record-lineage@$(UNTIL))
	selftrain summary --root artifacts $(if $(UNTIL),--until $(UNTIL))

flow: setup
	python -m flows.self_training --params params.yaml --root runs/prefect $(FLOWARGS)

# A Prefect server with its UI on this machine: SQLite under .prefect/, loopback only, http://127.0.0.1:4200
PREFECT_LOCAL := PREFECT_HOME=$(abspath .prefect) PREFECT_API_URL=http://127.0.0.1:4200/api
server: setup
	$(PREFECT_LOCAL) prefect server start --host 127.0.0.1 --port 4200

# With `make server` running: the work pools, prefect.yaml's deployments, then a worker for the process pool
# (the UI's "Run" on a deployment runs the flow here). Safe to repeat: pools and deployments are updated.
worker: setup
	$(PREFECT_LOCAL) prefect work-pool create process --type process --overwrite
	$(PREFECT_LOCAL) prefect work-pool create kubernetes --type kubernetes --base-job-template k8s/base-job-template.json --overwrite
	$(PREFECT_LOCAL) prefect --no-prompt deploy --all
	$(PREFECT_LOCAL) prefect worker start --pool process

# lint first (seconds), then the suite: ruff (pyflakes, import order, pyupgrade to the Python floor, format) and mypy on selftrain/;
# the suite on one pytest-xdist worker per core, each test module on one worker (its module fixtures built once),
# modules handed out slowest first (tests/conftest.py SLOWEST_FIRST; xdist would otherwise order them by test count)
test: setup
	ruff check .
	ruff format --check .
	mypy
	pytest -n auto --dist loadfile --no-loadscope-reorder

# The project's image (Dockerfile): VARIANT=cpu (default) or cuda, TAG (default selftrain:VARIANT). docker when a
# daemon answers, else buildah, whose base image is pulled or made here from Debian's packages (k8s/README.md).
image:
	VARIANT=$(VARIANT) TAG=$(TAG) scripts/image.sh

bench: setup
	python -m bench.throughput
