# eoforge: two commands for users (`make demo`, `make test`); everything else is set-up.
# Every target creates .venv when missing (idempotent) and installs the project from PyPI.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.eoforge-installed
# The CPU build of torch: a pinned version so pip never pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test lint typecheck bench system-deps clean test-long

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e '.[dev,torch,s3]'
	touch $(STAMP)

install: $(STAMP)

# System packages some integration tests need (PostgreSQL + PostGIS for stac-fastapi-pgstac,
# Chromium for page rendering). Installed only when missing and only when running as root;
# elsewhere those tests skip with a stated reason.
system-deps:
	@bash .ci/system-deps.sh || echo "system-deps: could not install optional system packages; tests that need them will skip"

demo: install
	$(BIN)/eoforge demo

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# The long reliability run: the crash test with 20 random SIGKILL moments instead of 3.
test-long: install system-deps
	EOFORGE_CRASH_KILLS=20 $(BIN)/python -m pytest -q tests/integration/test_build_crash.py

lint:
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy

# TorchGeo (the comparison in bench_loader) needs torchvision, which does not install beside
# torch 2.13.0: it gets its own venv, made once.
TG_VENV := benchmarks/.venv-torchgeo

$(TG_VENV)/.installed:
	$(PYTHON) -m venv $(TG_VENV)
	$(TG_VENV)/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" "torchgeo==0.8.1" requests
	touch $@

bench: install $(TG_VENV)/.installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
