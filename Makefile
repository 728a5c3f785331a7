# Two entry points a fresh machine needs: `make demo` and `make test`. Each installs what it needs
# (the demo: no test extras, no Chromium).
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

.PHONY: install install-demo demo test test-fast lint image

$(BIN)/python:
	$(PY) -m venv $(VENV)

# What the demo needs: torch first (the local CPU build: a bare `torch` requirement would pull several GB
# of CUDA wheels), then the package with Ray and scikit-image (the demo's photos). Done once per
# pyproject.toml change (the stamp file), so a second `make demo` starts the job at once.
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

# What the tests need on top: the test extras, Label Studio's brush-RLE decoder (its full dependency set
# would downgrade numpy) and headless Chromium (Debian's package) for the report test.
$(VENV)/.test-installed: $(VENV)/.demo-installed
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps label-studio-sdk
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	touch $@

install-demo: $(VENV)/.demo-installed

install: $(VENV)/.test-installed

demo:
	@test -f $(VENV)/.demo-installed || echo "make demo: first run: creates $(VENV) and installs CPU torch, Ray and diffseg (about 2 GB, a few minutes: 4.5 min measured with a nearby PyPI mirror), then runs the job (under a minute)"
	@$(MAKE) --no-print-directory install-demo
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
