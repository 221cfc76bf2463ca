# Set-up and entry points.  Every target installs what it needs first, so on
# a fresh machine `make demo` or `make test` is all there is to type.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup adapters demo test bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

adapters:
	$(MAKE) -C host_adapters/c
	cd host_adapters/go && go vet ./... && go build -o bin/outliers ./cmd/outliers

setup: $(STAMP) adapters

demo: setup
	$(PY) -m shmpool demo

# Every test: Python, then (driven by tests/test_adapters.py) Go and C.
test: setup
	$(PY) -m pytest -q

# Every method side by side, results in benchmarks/results/ (about 7 minutes).
bench: setup
	$(PY) -m benchmarks.run

# The memory-growth soak for an hour, with a Go host (see README).
soak: setup
	$(PY) -m shmpool soak --duration 3600 --go-host host_adapters/go/bin/outliers --out soak-out

clean:
	rm -rf $(VENV) host_adapters/c/build host_adapters/go/bin
