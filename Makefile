# DiffROP: the single entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# pytest workers (pytest-xdist): one per core, at most 4 (each imports its own torch); TEST_JOBS=1 runs serially
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
PARALLEL = $(if $(filter 1,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist worksteal)

.DEFAULT_GOAL := help
.PHONY: help install train quickstart test test-fast lint format clean

help: ## list the targets
	@# a rule may name several targets (reproduce-table1 ... reproduce-fig4b): a long list gets a line of its own
	@grep -hE '^[a-zA-Z0-9_%-][a-zA-Z0-9_% -]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
		'length($$1) > 20 {printf "  \033[36m%s\033[0m\n  %-20s %s\n", $$1, "", $$2; next} \
		{printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with dev extras (idempotent)

train: install ## train the default experiment (CIFAR10LT, DDPM; downloads CIFAR once); overrides: make train ARGS="loss=pcl_exp"
	$(PY) src/train.py data.download=true $(ARGS)

quickstart: install ## CPU, no download, a few minutes: tiny model on digits_lt, samples + data summary
	$(PY) src/train.py experiment=quickstart $(ARGS)

test: install ## everything CI runs: lint, the pytest suite (slow tests and `make smoke` included), test-slurm
	@$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q $(PARALLEL) -m "not slurm" tests $(ARGS)
	@$(MAKE) --no-print-directory test-slurm

test-fast: install ## the suite without slow tests
	$(PY) -m pytest -q $(PARALLEL) -m "not slow and not slurm" tests $(ARGS)

lint: install ## ruff lint + format check, and the package's import layers (lint-imports, pyproject.toml)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

format: install ## ruff fix + format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean: ## remove caches (keeps .venv, data and logs)
	rm -rf .pytest_cache .ruff_cache **/__pycache__

# --- SLURM: a real one-node cluster on this machine (docs/slurm.md) -------------------------------------------
SLURM_DIR ?= $(or $(DIFFROP_SLURM_DIR),/tmp/diffrop-slurm)
.PHONY: slurm-up slurm-down test-slurm

slurm-up: ## start a local one-node SLURM cluster (needs root; apt-installs slurm + munge once)
	DIFFROP_SLURM_DIR=$(SLURM_DIR) bash scripts/local_slurm.sh up

slurm-down: ## stop exactly the daemons slurm-up started (idempotent)
	DIFFROP_SLURM_DIR=$(SLURM_DIR) bash scripts/local_slurm.sh down

test-slurm: install ## local SLURM up, run tests/slurm (sweeps, DDP, pre-emption), down even on failure
	@if [ "$$(id -u)" -ne 0 ]; then \
	  echo "test-slurm: SKIPPED: starting the local SLURM cluster needs root (sudo make test-slurm)"; exit 0; fi; \
	if ! command -v apt-get >/dev/null && ! command -v slurmctld >/dev/null; then \
	  echo "test-slurm: SKIPPED: no slurmctld and no apt-get to install it"; exit 0; fi; \
	export DIFFROP_SLURM_DIR=$(SLURM_DIR); \
	trap 'bash scripts/local_slurm.sh down' EXIT; \
	bash scripts/local_slurm.sh up && . $(SLURM_DIR)/env.sh && $(PY) -m pytest -q -m slurm tests/slurm

# --- paper results, evaluation, benchmarks ------------------------------------------------------------------------
SMOKE ?= 0
REPRO = SMOKE=$(SMOKE) $(PY) experiments/reproduce.py
.PHONY: eval bench smoke reproduce-fig2 reproduce-samples pcl-study overlap-bench ddp-streams
reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4 reproduce-table5 reproduce-fig4a reproduce-fig4b: install ## train what is missing, evaluate, render the table (SMOKE=1: CPU smoke)
	$(REPRO) $(subst reproduce-,,$@) $(ARGS)
SMOKE_RUNS ?= logs/smoke
SMOKE_TARGETS := table1 table2 table3 table4 table5 fig4a fig4b samples
smoke: install ## every reproduce-* target with SMOKE=1 on CPU, sharing one runs root (SMOKE_RUNS): all paper pipelines in minutes
	@for t in $(SMOKE_TARGETS); do \
	  $(MAKE) --no-print-directory -o install reproduce-$$t SMOKE=1 PY=$(PY) ARGS="--runs $(SMOKE_RUNS) $(ARGS)" || exit 1; \
	done
reproduce-fig2: install ## the exact 1-D toy of paper Fig. 2
	$(PY) experiments/fig2_toy.py $(ARGS)
reproduce-samples: install ## Figs. 5-8 style grids of tail and random classes
	SMOKE=$(SMOKE) $(PY) experiments/sample_grids.py $(ARGS)
pcl-study: install ## CPU study, resumable: does PCL work? DDPM, grouped control, PCL eq12 x2 and batch pairing, 3 seeds, paired by seed (ARGS="--arms *": the old grid too)
	$(PY) experiments/pcl_study.py $(ARGS)
overlap-bench: install ## CPU, resumable, ~25 min on one core: DDPM (also at equal compute) vs PCL on a Gaussian mixture with exact answers (eps*, Bayes classifier), 5-8 seeds, paired
	$(PY) experiments/overlap_bench.py $(ARGS)
ddp-streams: install ## CPU, resumable, ~14 min: DDPM on 2 gloo ranks, per-rank vs shared training draws (the old DDP behaviour), 8 seeds, paired
	$(PY) experiments/ddp_streams.py $(ARGS)
eval: install ## evaluate a checkpoint: make eval ARGS="ckpt_path=<run>/checkpoints/last.ckpt"
	$(PY) src/eval.py $(ARGS)
bench: install ## benchmarks: Lightning vs plain step, loss ratios, samplers, eval; JSON in benchmarks/results/
	$(PY) benchmarks/bench.py $(ARGS)
