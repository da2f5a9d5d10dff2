# codegpt: parquet source code -> GPT-2 token shards -> a trained GPT-2.
# `make help` lists the targets and the variables. Variables can be set on the command line:
#   make train CONFIG=configs/gpt2-124m.yaml ARGS="lr=3e-4" MEM=24g GPUS=all
#
# Every stage runs `python -m pipeline <stage>` either in the codegpt image
# (`docker run` with memory, swap, shm and GPU limits) or on the host (RUN=local).
# Stamps under .stamps/ make tokenize and smoke idempotent: a second `make smoke`
# says it is up to date and does nothing; editing a config (or ARGS, or the input
# files) re-runs that stage and the ones after it. docs/containers.md has the details.
SHELL := /bin/bash
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

# The repository (this file's folder), so `make -f path/to/Makefile` works from anywhere;
# stage outputs (data/, out/, .stamps/) go to the folder make runs in.
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))

PY ?= python3
VENV ?= $(ROOT)/.venv
PYTHON := $(VENV)/bin/python
# A CPU box gets the local CPU wheel; a GPU host may set TORCH_SPEC to a cu128 build.
TORCH_SPEC ?= torch==2.13.0
SETUP_STAMP := $(VENV)/.setup.ok
VOCAB := $(ROOT)/model/assets/gpt2.tiktoken
P50K := $(ROOT)/model/assets/p50k_base.tiktoken# made from VOCAB by setup (model/tokenizer.py)

# ---------------------------------------------------------------- knobs
RUN ?= auto## docker, local, or auto (docker when `docker info` answers)
IMAGE ?= codegpt## the image `make image` builds and the stages run in
# 3/4 of this machine's memory: a runaway stage is killed before sshd starves.
MEM_DEFAULT := $(shell awk '/^MemTotal:/ {printf "%dg", $$2 * 3 / 4 / 1048576}' /proc/meminfo 2>/dev/null || echo 8g)
MEM ?= $(MEM_DEFAULT)## container memory cap, swap included (default: 3/4 of RAM)
GPUS ?= all## docker --gpus: all, a count, '"device=0,1"'; empty = no GPU
SHM ?= 2g## /dev/shm size (NCCL and shared-memory tensors live there)
NPROC ?= 1## GPUs of this box that `make train` uses (torchrun when > 1)
CONFIG ?= configs/gpt2-124m.yaml## train/smoke/plan config
SAMPLE_DATA_CONFIG ?= configs/sample-data.yaml## sample-data config
SAMPLE_CONFIG ?= configs/sample.yaml## sample config
SERVE_CONFIG ?= configs/serve.yaml## serve config
PORT ?= 8000## make serve: the port on 127.0.0.1
RUN_NAME ?= ## run folder out/$(RUN_NAME) instead of the config's out_dir
TEST_WORKERS ?= auto## make test: pytest-xdist workers for the parallel part (auto = the cores)
ARGS ?= ## key=value overrides for the stage(s) named on the command line
COMPOSE ?= docker compose

STAGES := sample-data dedup tokenize plan smoke train sample serve eval humaneval export plot report

# ---------------------------------------------------------------- where stages run
ifeq ($(RUN),auto)
ifneq ($(filter $(STAGES) up,$(MAKECMDGOALS)),)
RUN_MODE := $(shell timeout 10 docker info >/dev/null 2>&1 && echo docker || echo local)
ifeq ($(RUN_MODE),local)
$(shell echo "make: no Docker engine answers 'docker info'; running on the host (RUN=docker or RUN=local to choose)" >&2)
endif
else
RUN_MODE := local
endif
else ifneq ($(filter $(RUN),docker local),)
RUN_MODE := $(RUN)
else
$(error RUN=$(RUN): expected auto, docker or local)
endif

USER_IDS := $(shell id -u):$(shell id -g)
# The exact command line of a stage in the container: memory and swap capped to the
# same value (no swap thrash), an init that forwards SIGTERM, the host user's ids so
# outputs are the user's files, data/ and out/ writable, configs/ read-only.
DOCKER_RUN = docker run --rm --init --memory=$(MEM) --memory-swap=$(MEM) --shm-size=$(SHM) \
	--user $(USER_IDS) -v $(CURDIR)/data:/app/data -v $(CURDIR)/out:/app/out \
	-v $(CURDIR)/configs:/app/configs:ro -e CODEGPT_LOG

GPU_FLAG = $(if $(GPUS),--gpus '$(GPUS)')
# $(call stage,NAME,gpu or empty,ARGUMENTS[,MORE DOCKER OPTIONS]): run `python -m pipeline
# NAME ARGUMENTS`.
ifeq ($(RUN_MODE),docker)
RUNTIME := image-present
stage = $(DOCKER_RUN) $(if $(2),$(GPU_FLAG)) $(4) $(IMAGE) $(1) $(3)
torchrun = $(DOCKER_RUN) $(GPU_FLAG) --entrypoint python $(IMAGE) -m pipeline.launch $(1)
else
RUNTIME := setup
stage = $(PYTHON) -m pipeline $(1) $(3)
torchrun = $(PYTHON) -m pipeline.launch $(1)
endif

# ---------------------------------------------------------------- config values, without Python
# (docker mode needs only make and docker on the host). The configs are flat YAML.
# $(call yaml_get,FILE,KEY): a top-level scalar, quotes and comment stripped.
yaml_get = $(shell sed -n -E "s/^$(2):[[:space:]]*['\"]?([^'\"\#[:space:]]*).*/\1/p" $(1) 2>/dev/null | head -n 1)
# $(call arg_get,ARGS,KEY): the last KEY=value in ARGS.
arg_get = $(patsubst $(2)=%,%,$(lastword $(filter $(2)=%,$(1))))
# ARGS go to the stages named on the command line (smoke and train share them:
# smoke proves the config that train runs), not to prerequisites of another kind.
goal_args = $(if $(filter $(1),$(MAKECMDGOALS)),$(ARGS))

SAMPLE_DATA_ARGS ?= $(call goal_args,sample-data)
TRAIN_ARGS ?= $(strip $(if $(RUN_NAME),out_dir=out/$(RUN_NAME)) $(call goal_args,plan smoke train))
SAMPLE_ARGS ?= $(call goal_args,sample)
SERVE_ARGS ?= $(call goal_args,serve)
OUT_ARGS ?= $(call goal_args,export plot report)
EVAL_ARGS ?= $(call goal_args,eval)
HUMANEVAL_ARGS ?= $(call goal_args,humaneval)
HUMANEVAL_CONFIG ?= configs/humaneval.yaml## humaneval config

SAMPLE_OUT := $(or $(call arg_get,$(SAMPLE_DATA_ARGS),output),$(call yaml_get,$(SAMPLE_DATA_CONFIG),output),data/sample)
DATA := $(or $(call arg_get,$(TRAIN_ARGS),data),$(call yaml_get,$(CONFIG),data))
RUN_DIR := $(or $(call arg_get,$(TRAIN_ARGS),out_dir),$(call yaml_get,$(CONFIG),out_dir))
# The tokenize config that writes CONFIG's shards: the configs/*.yaml whose `output:`
# is CONFIG's `data:` (demo.yaml -> demo-tokenize.yaml), else configs/tokenize.yaml.
ifeq ($(origin TOKENIZE_CONFIG),undefined)
TOKENIZE_CONFIG := $(or $(if $(DATA),$(firstword $(shell grep -l -E "^output:[[:space:]]*['\"]?$(DATA)['\"]?[[:space:]]*(\#.*)?$$" configs/*.yaml 2>/dev/null))),configs/tokenize.yaml)
endif
TOKENIZE_ARGS ?= $(call goal_args,tokenize)
TOK_INPUT := $(or $(call arg_get,$(TOKENIZE_ARGS),input),$(call yaml_get,$(TOKENIZE_CONFIG),input),data/raw)
TOK_OUTPUT := $(or $(call arg_get,$(TOKENIZE_ARGS),output),$(call yaml_get,$(TOKENIZE_CONFIG),output))
TOK_SCHEMA := $(or $(call arg_get,$(TOKENIZE_ARGS),schema),$(call yaml_get,$(TOKENIZE_CONFIG),schema),github-code)
# input is a folder (its parquet and JSON Lines files), a glob or a file, as
# pipeline/corpus/source.py reads it; a folder of source files (schema=files) is not
# listed here (its .gitignore rules are the stage's): the stage runs and decides itself
# whether it is up to date (it compares every file's size and mtime).
TABLE_FILES := *.parquet *.jsonl *.jsonl.gz *.jsonl.zst
input_files = $(if $(findstring *,$(1))$(findstring ?,$(1))$(findstring [,$(1)),$(wildcard $(1)),$(if $(wildcard $(1)/.),$(wildcard $(addprefix $(1)/,$(TABLE_FILES))),$(wildcard $(1))))
# $(call input_deps,INPUT,SCHEMA): a stamp's prerequisites for its input
input_deps = $(if $(filter files,$(2)),FORCE,$(call input_files,$(1)))
TOK_FILES := $(call input_deps,$(TOK_INPUT),$(TOK_SCHEMA))
# $(call touch_stamp,STAMP,SCHEMA,OUTPUT STATE FILE): a stage that always runs (schema=files)
# touches its stamp only when it wrote something, so the stages after it (smoke, train)
# do not re-run for an input that did not change
touch_stamp = $(if $(filter files,$(2)),test -e $(1) -a $(1) -nt $(3) ||) touch $(1)
# The near-dedup decision tokenize reads (its `near_dedup:`), and the dedup config that
# writes it: the configs/*.yaml whose `output:` is that folder, else configs/dedup.yaml.
# A near_dedup in ARGS wins over the config's; near_dedup="" (or near_dedup=) turns it off.
TOK_NEAR := $(if $(filter near_dedup=%,$(TOKENIZE_ARGS)),$(filter-out "" '',$(call arg_get,$(TOKENIZE_ARGS),near_dedup)),$(call yaml_get,$(TOKENIZE_CONFIG),near_dedup))
ifeq ($(origin DEDUP_CONFIG),undefined)
DEDUP_CONFIG := $(or $(if $(TOK_NEAR),$(firstword $(shell grep -l -E "^output:[[:space:]]*['\"]?$(TOK_NEAR)['\"]?[[:space:]]*(\#.*)?$$" configs/*.yaml 2>/dev/null))),configs/dedup.yaml)
endif
# The dedup that `make tokenize` runs first gets tokenize's ARGS but for the keys only
# tokenize has: the input, the rules its decision is checked against and the reading
# keys (SourceConfig, pipeline/corpus/settings.py) are given once and reach both;
# a near_dedup in ARGS is that dedup's output. `make dedup` itself takes its own ARGS.
TOKENIZE_ONLY := output tokenizer shard_tokens val_fraction dedup near_dedup force
tokenize_to_dedup = $(filter-out $(addsuffix =%,$(TOKENIZE_ONLY)),$(1)) \
	$(if $(and $(filter near_dedup=%,$(1)),$(TOK_NEAR)),output=$(TOK_NEAR))
DEDUP_ARGS ?= $(strip $(if $(filter dedup,$(MAKECMDGOALS)),$(ARGS),$(call tokenize_to_dedup,$(TOKENIZE_ARGS))))
DEDUP_INPUT := $(or $(call arg_get,$(DEDUP_ARGS),input),$(call yaml_get,$(DEDUP_CONFIG),input),data/raw)
DEDUP_SCHEMA := $(or $(call arg_get,$(DEDUP_ARGS),schema),$(call yaml_get,$(DEDUP_CONFIG),schema),github-code)
DEDUP_OUT := $(or $(call arg_get,$(DEDUP_ARGS),output),$(call yaml_get,$(DEDUP_CONFIG),output))

# ---------------------------------------------------------------- stamps
# .stamps/<stage>@<config path with / as _>; touched after the stage succeeded.
# Beside each, <stamp>.args holds the key=value overrides it last ran with: a change
# re-runs the stage as a config edit does. It is written when the stage runs (not
# under make -n), and compared at parse time, so `make -n` and `make -q` see it.
STAMPS := .stamps
stamp = $(STAMPS)/$(1)@$(subst /,_,$(patsubst $(CURDIR)/%,%,$(abspath $(2))))
SAMPLE_DATA_STAMP := $(call stamp,sample-data,$(SAMPLE_DATA_CONFIG))
DEDUP_STAMP := $(call stamp,dedup,$(DEDUP_CONFIG))
TOKENIZE_STAMP := $(call stamp,tokenize,$(TOKENIZE_CONFIG))
SMOKE_STAMP := $(call stamp,smoke,$(CONFIG))
differ = $(subst $(1),,$(2))$(subst $(2),,$(1))
args_changed = $(or $(if $(wildcard $(1).args),,new),$(call differ,$(strip $(2)),$(file <$(1).args)))
# $(call args_deps,STAMP,ARGS): prerequisites of STAMP for its ARGS
args_deps = $(wildcard $(1).args) $(if $(call args_changed,$(1),$(2)),FORCE)
# make -n, -q or -t: expand recipes without running them, so record nothing
dry_run = $(strip $(foreach f,n q t,$(findstring $(f),$(firstword -$(MAKEFLAGS)))))
# $(call record_args,STAMP,ARGS): first line of a stamp's recipe
record_args = $(if $(call dry_run),,$(file >$(1).args,$(strip $(2))))
# An output deleted by hand makes its stamp stale.
missing = $(if $(wildcard $(1)),,FORCE)
ifneq ($(filter $(STAGES) up,$(MAKECMDGOALS)),)
$(shell mkdir -p $(STAMPS))
endif

.PHONY: help setup lint lint-containers fmt test image image-present up logs demo \
	$(STAGES) bench bench-tokenize bench-tokenizer bench-train bench-sample bench-serve bench-loader gpu-carry tensorboard clean clean-stamps clean-venv FORCE

help: ## list the targets and the variables
	@echo "targets:"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "variables (make TARGET NAME=value):"
	@awk 'BEGIN {FS = " [?]= |## "} /^[A-Z_]+ [?]= .*## / {printf "  %-18s %s (%s)\n", $$1, $$3, $$2}' $(MAKEFILE_LIST)
	@echo "  now: RUN=$(RUN) MEM=$(MEM) GPUS=$(GPUS) SHM=$(SHM) IMAGE=$(IMAGE) CONFIG=$(CONFIG)"

# ---------------------------------------------------------------- host environment
setup: $(SETUP_STAMP) $(VOCAB) $(P50K) ## create .venv and install everything (idempotent, offline-safe torch)

$(SETUP_STAMP): $(ROOT)/pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e "$(ROOT)[dev]"
	touch $@

$(VOCAB) $(P50K): | $(SETUP_STAMP)
	$(PYTHON) -m model.tokenizer fetch

lint: setup lint-containers ## ruff (lint + format check), mypy, hadolint, compose checks
	cd $(ROOT) && $(PYTHON) -m ruff check .
	cd $(ROOT) && $(PYTHON) -m ruff format --check .
	cd $(ROOT) && $(PYTHON) -m mypy pipeline model

lint-containers: setup ## Dockerfile (hadolint) and compose.yaml (schema + compose model), no engine needed
	$(VENV)/bin/hadolint $(ROOT)/Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec $(ROOT)/compose.yaml
	$(VENV)/bin/docker-compose -f $(ROOT)/compose.yaml config --quiet

fmt: setup ## apply ruff's fixes and formatting
	cd $(ROOT) && $(PYTHON) -m ruff check --fix .
	cd $(ROOT) && $(PYTHON) -m ruff format .

# The suite in two parts (docs/testing.md): the tests safe side by side on every core
# (pytest-xdist; a module's tests on one worker, so its fixtures are built once and its
# tests never meet each other's processes), then those marked serial, alone.
test: setup lint ## lint, then the whole test suite (CPU only)
	cd $(ROOT) && $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m "not serial"
	cd $(ROOT) && $(PYTHON) -m pytest -q -m serial

# ---------------------------------------------------------------- image
image: ## build the CUDA 12.8 image $(IMAGE) (docs/containers.md)
	docker build -t $(IMAGE) $(ROOT)

image-present:
	@docker image inspect $(IMAGE) >/dev/null 2>&1 || docker build -t $(IMAGE) $(ROOT)

# ---------------------------------------------------------------- stages
# `mkdir -p data out` first: docker would create a missing mount source owned by root.
sample-data: $(SAMPLE_DATA_STAMP) ## write the built-in sample of real code to data/sample/*.parquet
	@echo "sample-data: $(if $(RAN_sample-data),done,up to date, nothing to do) ($(SAMPLE_DATA_CONFIG) -> $(SAMPLE_OUT))"

$(SAMPLE_DATA_STAMP): $(SAMPLE_DATA_CONFIG) $(call args_deps,$(SAMPLE_DATA_STAMP),$(SAMPLE_DATA_ARGS)) $(call missing,$(SAMPLE_OUT)/sample-data.json) | $(RUNTIME)
	$(eval RAN_sample-data := 1)$(call record_args,$@,$(SAMPLE_DATA_ARGS))
	@mkdir -p data out $(@D)
	$(call stage,sample-data,,--config $(SAMPLE_DATA_CONFIG) $(SAMPLE_DATA_ARGS))
	@touch $@

dedup: $(DEDUP_STAMP) ## near-duplicate decision for tokenize's input (DEDUP_CONFIG, paired with its near_dedup)
	@echo "dedup: $(if $(RAN_dedup),done,up to date, nothing to do) ($(DEDUP_CONFIG) -> $(DEDUP_OUT))"

$(DEDUP_STAMP): $(DEDUP_CONFIG) $(call args_deps,$(DEDUP_STAMP),$(DEDUP_ARGS)) $(call input_deps,$(DEDUP_INPUT),$(DEDUP_SCHEMA)) \
		$(if $(filter $(SAMPLE_OUT),$(DEDUP_INPUT)),$(SAMPLE_DATA_STAMP)) \
		$(call missing,$(DEDUP_OUT)/dedup.json) | $(RUNTIME)
	$(eval RAN_dedup := 1)$(call record_args,$@,$(DEDUP_ARGS))
	@mkdir -p data out $(@D)
	$(call stage,dedup,,--config $(DEDUP_CONFIG) $(DEDUP_ARGS))
	@$(call touch_stamp,$@,$(DEDUP_SCHEMA),$(DEDUP_OUT)/dedup.json)

tokenize: $(TOKENIZE_STAMP) ## parquet, JSON Lines or a folder of files -> token shards + manifest (TOKENIZE_CONFIG, paired with CONFIG's data)
	@echo "tokenize: $(if $(RAN_tokenize),done,up to date, nothing to do) ($(TOKENIZE_CONFIG) -> $(TOK_OUTPUT))"

# Each stamp depends on the stamp before it: a stage that re-ran re-runs the ones
# after it. The demo's input is sample-data's output: make that first when it is so;
# with near_dedup set, the dedup decision comes first too.
$(TOKENIZE_STAMP): $(TOKENIZE_CONFIG) $(call args_deps,$(TOKENIZE_STAMP),$(TOKENIZE_ARGS)) $(TOK_FILES) \
		$(if $(filter $(SAMPLE_OUT),$(TOK_INPUT)),$(SAMPLE_DATA_STAMP)) $(if $(TOK_NEAR),$(DEDUP_STAMP)) \
		$(call missing,$(TOK_OUTPUT)/manifest.json) | $(RUNTIME)
	$(eval RAN_tokenize := 1)$(call record_args,$@,$(TOKENIZE_ARGS))
	@mkdir -p data out $(@D)
	$(call stage,tokenize,,--config $(TOKENIZE_CONFIG) $(TOKENIZE_ARGS))
	@$(call touch_stamp,$@,$(TOK_SCHEMA),$(TOK_OUTPUT)/manifest.json)

plan: | $(RUNTIME) ## GPU memory and time the training config needs
	@mkdir -p data out
	$(call stage,plan,gpu,--config $(CONFIG) $(TRAIN_ARGS))

smoke: $(SMOKE_STAMP) ## 10 steps + eval + checkpoint round trip on the real shards; writes out/<run>/smoke.ok
	@echo "smoke: $(if $(RAN_smoke),done,up to date, nothing to do) ($(CONFIG) -> $(RUN_DIR)/smoke.ok)"

$(SMOKE_STAMP): $(CONFIG) $(call args_deps,$(SMOKE_STAMP),$(TRAIN_ARGS)) $(TOKENIZE_STAMP) \
		$(call missing,$(RUN_DIR)/smoke.ok) | $(RUNTIME)
	$(eval RAN_smoke := 1)$(call record_args,$@,$(TRAIN_ARGS))
	@mkdir -p data out $(@D)
	$(call stage,smoke,gpu,--config $(CONFIG) $(TRAIN_ARGS))
	@touch $@

# NPROC processes split each step's grad_accum micro-batches: a count they do not divide is
# said here, in one line, before smoke or torchrun start (the ranks would each refuse it).
ifneq ($(filter train,$(MAKECMDGOALS)),)
ifneq ($(NPROC),1)
GRAD_ACCUM := $(or $(call arg_get,$(TRAIN_ARGS),grad_accum),$(call yaml_get,$(CONFIG),grad_accum))
ifneq ($(and $(GRAD_ACCUM),$(shell test $$(( $(GRAD_ACCUM) % $(NPROC) )) -ne 0 2>/dev/null && echo x)),)
$(error grad_accum=$(GRAD_ACCUM) ($(CONFIG)) is not divisible by NPROC=$(NPROC) processes; set grad_accum to a multiple of $(NPROC) (ARGS="grad_accum=...") or another NPROC)
endif
endif
endif

train: $(SMOKE_STAMP) | $(RUNTIME) ## train CONFIG after a passing smoke; resumes by itself (NPROC=8: torchrun)
	@mkdir -p data out
ifeq ($(NPROC),1)
	$(call stage,train,gpu,--config $(CONFIG) $(TRAIN_ARGS))
else
	$(call torchrun,--standalone --nproc_per_node=$(NPROC) -m pipeline train --config $(CONFIG) $(TRAIN_ARGS))
endif

sample: | $(RUNTIME) ## text from the newest checkpoint of CONFIG's run (SAMPLE_CONFIG)
	@mkdir -p data out
	$(call stage,sample,gpu,--config $(SAMPLE_CONFIG) out_dir=$(RUN_DIR) $(SAMPLE_ARGS))

# In a container the server listens on every interface of the container, and only the
# host's 127.0.0.1:$(PORT) reaches it (docker -p); on the host it listens on 127.0.0.1:$(PORT).
ifeq ($(RUN_MODE),docker)
SERVE_NET := host=0.0.0.0 port=8000
SERVE_DOCKER := -p 127.0.0.1:$(PORT):8000 -e CODEGPT_API_KEY
else
SERVE_NET := port=$(PORT)
endif
serve: | $(RUNTIME) ## OpenAI-compatible completions server over the run on 127.0.0.1:$(PORT) (docs/serve.md)
	@mkdir -p data out
	$(call stage,serve,gpu,--config $(SERVE_CONFIG) out_dir=$(RUN_DIR) $(SERVE_NET) $(SERVE_ARGS),$(SERVE_DOCKER))

eval: | $(RUNTIME) ## per-language loss and bits per byte of the run on the val split (out/<run>/eval/)
	@mkdir -p data out
	$(call stage,eval,gpu,out_dir=$(RUN_DIR) $(EVAL_ARGS))

# The model's programs run in the stage's sandbox (docs/eval.md); in a container, where the
# sandbox cannot make a network namespace, the container itself has no network.
humaneval: | $(RUNTIME) ## HumanEval pass@k of the run, programs sandboxed (out/<run>/humaneval/)
	@mkdir -p data out
	$(call stage,humaneval,gpu,--config $(HUMANEVAL_CONFIG) out_dir=$(RUN_DIR) $(HUMANEVAL_ARGS),--network=none)

export: | $(RUNTIME) ## Hugging Face GPT2LMHeadModel folder of the run (out/<run>/hf)
	@mkdir -p data out
	$(call stage,export,,out_dir=$(RUN_DIR) $(OUT_ARGS))

plot: | $(RUNTIME) ## loss curve PNG of the run (out/<run>/loss.png)
	@mkdir -p data out
	$(call stage,plot,,out_dir=$(RUN_DIR) $(OUT_ARGS))

report: | $(RUNTIME) ## text summary of the run
	@mkdir -p data out
	$(call stage,report,,out_dir=$(RUN_DIR) $(OUT_ARGS))

# ---------------------------------------------------------------- compose (headless box)
COMPOSE_ENV = env UID=$(shell id -u) GID=$(shell id -g) MEM=$(MEM) SHM=$(SHM) IMAGE=$(IMAGE) CONFIG=$(CONFIG)

# The trainer refuses to start without smoke.ok, so smoke (in a container) comes first.
# `env`: bash will not take UID=... before a command (UID is read-only there).
up: $(SMOKE_STAMP) ## smoke, then docker compose up -d trainer (restarts on failure, resumes)
	@mkdir -p data out
	$(COMPOSE_ENV) $(COMPOSE) -f $(ROOT)/compose.yaml up -d trainer

TB_PORT ?= 6006## make tensorboard: its port on 127.0.0.1
tensorboard: setup ## the live dashboard of every run under out/ (TensorBoard on 127.0.0.1:TB_PORT)
	cd $(ROOT) && $(VENV)/bin/tensorboard --logdir out --host 127.0.0.1 --port $(TB_PORT)

logs: ## follow the trainer's log
	$(COMPOSE) -f $(ROOT)/compose.yaml logs -f trainer

# ---------------------------------------------------------------- demo
DEMO := -f $(ROOT)/Makefile --no-print-directory RUN=local CONFIG=configs/demo.yaml

demo: setup ## the whole chain on the CPU on the built-in sample (tiny GPT, a few minutes)
	$(MAKE) $(DEMO) train
	$(MAKE) $(DEMO) plot report
	$(MAKE) $(DEMO) sample ARGS="prompt='def read_config(path' max_new_tokens=100"
	$(MAKE) $(DEMO) eval ARGS="max_tokens=100000"

# ---------------------------------------------------------------- benchmarks (host)
bench: bench-tokenize bench-tokenizer bench-train bench-sample bench-serve bench-loader ## all benchmarks -> docs/benchmarks/*.md (run on an idle box)

bench-tokenize: setup ## tokenize rate and peak memory -> docs/benchmarks/tokenize.md
	cd $(ROOT) && $(PYTHON) bench/tokenize_bench.py $(ARGS)

bench-tokenizer: setup ## gpt2 vs p50k: bytes per token, tokenize speed, demo bits per byte at equal steps -> docs/benchmarks/tokenizer.md
	cd $(ROOT) && $(PYTHON) bench/tokenizer_bench.py $(ARGS)

bench-train: setup ## time to a val loss: a plain loop vs codegpt's losses and Muon -> docs/benchmarks/train.md
	$(MAKE) $(DEMO) tokenize
	cd $(ROOT) && $(PYTHON) bench/train_bench.py $(ARGS)

bench-sample: setup ## sampling speed with and without the KV cache -> docs/benchmarks/sample.md
	cd $(ROOT) && $(PYTHON) bench/sample_bench.py $(ARGS)

bench-loader: setup ## the train loader's tokens/s with and without FIM, one core, vs the 124M GPU step -> docs/benchmarks/loader.md
	cd $(ROOT) && $(PYTHON) bench/loader_bench.py $(ARGS)

bench-serve: setup ## the server: 8 streaming clients vs 1, time to first token, overhead vs sample -> docs/benchmarks/serve.md
	cd $(ROOT) && $(PYTHON) bench/serve_bench.py $(ARGS)

# ---------------------------------------------------------------- a lent GPU (bench/gpu_session.sh)
# The server's packages that the lent machine's image lacks, as wheels for its Python
# (3.12, x86-64); the versions this project's .venv runs.
GPU_WHEELS := starlette==1.10.0 anyio==4.16.0 uvicorn==0.55.0 h11==0.16.0 httptools==0.9.0 \
	httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
WHEEL_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64,--platform $(p))

gpu-carry: setup ## what a lent GPU needs: data/shards/demo, the vocabulary, .whl/ (docs/benchmarks.md)
	$(MAKE) $(DEMO) tokenize
	cd $(ROOT) && $(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(WHEEL_PLATFORMS) -d .whl $(GPU_WHEELS)
	@cd $(ROOT) && du -sh data/shards/demo model/assets/gpt2.tiktoken model/assets/p50k_base.tiktoken .whl
	@echo "carry: data/shards/demo model/assets/gpt2.tiktoken model/assets/p50k_base.tiktoken .whl; run: bash bench/gpu_session.sh 1, then 2"

# ---------------------------------------------------------------- cleaning
clean-stamps: ## delete .stamps/ only: the next make re-runs each stage, which skips finished work itself
	rm -rf $(STAMPS)
	@echo "deleted $(STAMPS)/; data/, out/ and checkpoints untouched"

clean: clean-stamps ## delete .stamps/, out/demo, data/shards/demo, data/dedup/demo and data/sample (never data/raw or other runs)
	rm -rf out/demo data/shards/demo data/dedup/demo data/sample
	@echo "deleted out/demo data/shards/demo data/dedup/demo data/sample; data/raw, other shards and other runs' checkpoints untouched"

clean-venv: ## delete .venv
	rm -rf $(VENV)

FORCE:
