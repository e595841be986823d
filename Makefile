# Development entry points. Only python3 (>= 3.11) is needed to start:
# `make venv` builds .venv with the dev extras, everything else runs from there.

PYTHON ?= python3
VENV := .venv
VENV_BIN := $(VENV)/bin
# Re-install when pyproject.toml changes; the stamp keeps `make venv` cheap otherwise.
STAMP := $(VENV)/.tusbridge-dev-installed

# Extra arguments: `make test NOX_ARGS='-- -k harness'`, `make test-fast PYTEST_ARGS='-x'`.
NOX_ARGS ?=
PYTEST_ARGS ?=
# `make bench BENCH_ARGS='--scale 0.1 --repeats 1'` for a quick run.
BENCH_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help venv js test test-fast test-all soak demo bench clean

help:
	@echo "make venv       create .venv and install tusbridge with the dev extras"
	@echo "make js         npm ci in example/: the browser clients of the example pages"
	@echo "make test       the fast tier on every Django of the matrix, the whole suite on the newest (nox)"
	@echo "make test-fast  the fast tier in .venv: in-process tests on the in-memory stores (about 30 s)"
	@echo "make test-all   the whole suite once in .venv (real Redis, gunicorn, uvicorn, browsers)"
	@echo "make soak       the long fault-injection runs (worker kills), excluded from make test"
	@echo "make demo       run the example site with gunicorn on http://127.0.0.1:8000/"
	@echo "make bench      benchmarks against peers and a ceiling -> benchmarks/REPORT.md (BENCH_ARGS=...)"
	@echo "make clean      remove nox environments, build output and test artifacts"

venv: $(STAMP)

$(VENV_BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV_BIN)/python
	$(VENV_BIN)/python -m pip install --upgrade pip
	$(VENV_BIN)/python -m pip install -e '.[dev]'
	touch $@

# The example's browser clients (Uppy, jQuery-File-Upload, ...) from npm, as
# locked in example/package-lock.json; re-installed when the lock file changes.
js: example/node_modules/.package-lock.json

example/node_modules/.package-lock.json: example/package-lock.json
	cd example && npm ci --no-audit --no-fund

test: venv
	$(VENV_BIN)/nox -r $(NOX_ARGS)

test-fast: venv
	TUSBRIDGE_TEST_STORES=memory $(VENV_BIN)/pytest $(PYTEST_ARGS)

test-all: venv
	$(VENV_BIN)/pytest $(PYTEST_ARGS)

# Long fault-injection runs (tests marked `soak`, which `make test` leaves out).
soak: venv
	$(VENV_BIN)/pytest -m soak -s $(PYTEST_ARGS)

demo: venv
	bash scripts/demo.sh

bench: venv
	$(VENV_BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf .nox build test-artifacts *.egg-info
