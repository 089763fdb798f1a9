# Forseti — the two commands a newcomer runs: `make demo` and `make test`.
# Every target sets up what it needs, idempotently.

SHELL := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.forseti-installed
# The CPU build of torch, installed before anything that could pull CUDA packages.
TORCH  := torch==2.13.0
# ByzFL, the reference of forseti.consensus's parity tests. Installed without its dependencies:
# they include torchvision, which would replace the CPU torch with a CUDA build. The tests load
# only its aggregators and attacks (numpy, torch, scipy: all in the dev extra).
BYZFL  := byzfl==0.0.11

.PHONY: help venv postgres demo test lint bench bench-smoke clean

help:
	@echo "make demo         run the end-to-end demo on the embedded SQLite store"
	@echo "make test         run the whole test suite (installs everything, starts PostgreSQL)"
	@echo "make lint         ruff and strict mypy over the package"
	@echo "make bench        run the benchmarks against their in-process baselines"
	@echo "make bench-smoke  a quick benchmark run (CI)"

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(BYZFL)
	@touch $(STAMP)

# Debian's PostgreSQL server binaries for the throwaway test cluster (no service is used).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	else \
	  echo "installing Debian's postgresql (server binaries for the test cluster)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	fi

demo: venv
	$(BIN)/python -m forseti demo

test: venv postgres
	FORSETI_REQUIRE_POSTGRES=1 FORSETI_SOAK=1 $(BIN)/python -m pytest -q -n auto --maxprocesses 4

lint: venv
	$(BIN)/ruff check src --select F,E9,B,I
	$(BIN)/mypy

bench: venv postgres
	$(BIN)/python benchmarks/run.py

bench-smoke: venv postgres
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf $(VENV) .forseti .bench .pytest_cache .hypothesis build src/*.egg-info
