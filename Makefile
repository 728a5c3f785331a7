# Two entry points a fresh machine needs: `make demo` and `make test`. Both install what they need.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# the image every cluster/ YAML names; scripts/set-image rewrites them for your registry (docs/deploy.md)
IMAGE ?= ghcr.io/your-org/diffseg:$(VERSION)
export RAY_USAGE_STATS_ENABLED=0
export AWS_EC2_METADATA_DISABLED=true
# Ray's loopback mode: local runtimes and test clusters bind to 127.0.0.1, never the machine's own address
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

.PHONY: install demo test test-fast lint image

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: the local CPU build. A bare `torch` requirement would pull several GB of CUDA wheels.
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[test]'
	# Label Studio's brush-RLE decoder for the export test; its full dependency set would downgrade numpy
	$(BIN)/python -m pip install -q --no-deps label-studio-sdk
	# headless Chromium (Debian's package) for the report test, which fails without it
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

demo: install
	$(BIN)/python -m jobs.demo

lint: install
	$(BIN)/ruff check diffseg jobs tests

test: install
	$(BIN)/ruff check diffseg jobs tests
	$(BIN)/python -m pytest -q

# local iteration: everything but the slow end-to-end tests (CI runs them all through `make test`)
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# the container image of cluster/ (needs a Docker daemon; none exists on the CI machines: docs/deploy.md)
image:
	docker build -f cluster/Dockerfile -t $(IMAGE) .
