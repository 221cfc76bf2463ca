# Set-up and entry points.  Every target installs what it needs first, so on
# a fresh machine `make demo` or `make test` is all there is to type.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup adapters demo test clean

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

clean:
	rm -rf $(VENV) host_adapters/c/build host_adapters/go/bin
