# codegpt: parquet source code -> GPT-2 token shards -> a trained GPT-2.
# `make help` lists the targets. Variables can be set on the command line:
#   make train CONFIG=configs/gpt2-124m.yaml ARGS="lr=3e-4"
SHELL := /bin/bash
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# A CPU box gets the local CPU wheel; a GPU host may set TORCH_SPEC to a cu128 build.
TORCH_SPEC ?= torch==2.13.0
SETUP_STAMP := $(VENV)/.setup.ok
VOCAB := pipeline/assets/gpt2.tiktoken

TOKENIZE_CONFIG ?= configs/tokenize.yaml
CONFIG ?= configs/gpt2-124m.yaml
SAMPLE_CONFIG ?= configs/sample.yaml
ARGS ?=

.PHONY: help setup test lint fmt sample-data tokenize clean-venv

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(SETUP_STAMP) $(VOCAB) ## create .venv and install everything (idempotent, offline-safe torch)

$(SETUP_STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[dev]"
	touch $@

$(VOCAB): | $(SETUP_STAMP)
	$(PYTHON) -m pipeline.tokenizer fetch

lint: setup ## ruff (lint + format check) and mypy
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy pipeline model

fmt: setup ## apply ruff's fixes and formatting
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

test: setup lint ## lint, then the whole test suite (CPU only)
	$(PYTHON) -m pytest -q

sample-data: setup ## write the built-in sample of real code to data/sample/*.parquet
	$(PYTHON) -m pipeline sample-data $(ARGS)

tokenize: setup ## parquet -> token shards + manifest (configs/tokenize.yaml)
	$(PYTHON) -m pipeline tokenize --config $(TOKENIZE_CONFIG) $(ARGS)

clean-venv: ## delete .venv
	rm -rf $(VENV)
