# Set-up and entry points.  Every target installs what it needs first, so on
# a fresh machine `make demo` or `make test` is all there is to type.
#
#   make demo     the runtime dependencies only (numpy, psutil), then the demo
#   make test     everything the tests need (+ the Go and C adapters), then
#                 ruff, mypy and the whole test suite
#   make wheel    an abi3 wheel in wheelhouse/, repaired by auditwheel
#   make bench    the benchmarks; make soak: an hour of the soak

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime
FULL    := $(VENV)/.full

.PHONY: setup adapters demo lint test wheel bench soak clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml setup.py | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $(RUNTIME)

$(FULL): pyproject.toml setup.py | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(RUNTIME) $(FULL)

adapters:
	$(MAKE) -C host_adapters/c
	cd host_adapters/go && go vet ./... && go build -o bin/outliers ./cmd/outliers

setup: $(FULL) adapters

demo: $(RUNTIME)
	$(PY) -m shmpool demo

lint: $(FULL)
	$(VENV)/bin/ruff check shmpool
	$(VENV)/bin/mypy

# Lint, then every test: Python, then (driven by tests/test_adapters.py) Go and C.
test: setup lint
	$(PY) -m pytest -q

wheel: $(FULL)
	rm -rf build dist wheelhouse
	$(PY) -m build --wheel --outdir dist .
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair --wheel-dir wheelhouse dist/*.whl
	ls wheelhouse

# Every method side by side, results in benchmarks/results/.
bench: setup
	$(PY) -m benchmarks.run

# The memory-growth soak for an hour, with a Go host (see README).
soak: setup
	$(PY) -m shmpool soak --duration 3600 --go-host host_adapters/go/bin/outliers --out soak-out

clean:
	rm -rf $(VENV) build dist wheelhouse host_adapters/c/build host_adapters/go/bin
