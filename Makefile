# Thin wrappers around the project's commands: read a target to see what it runs.
#
#   make setup                  create .venv (if missing) and install lsslib[book,dev]
#   make data                   show where lsslib finds (or would download) the data
#   make pipeline PROFILE=cpu   run the Snakemake workflow for one profile
#   make book PROFILE=cpu       setup + pipeline + strict book build (_build/html)
#   make study                  the study profile (seeds, factorial; 72 min on 2 cores)
#                               and its records (records/study/); STUDY=tuning, evidence,
#                               evidence_fmnist, evidence_ipc10 for the evidence profiles
#   make unlock PROFILE=cpu     release Snakemake's lock after a crash or kill
#   make test                   everything CI checks (lint, unit tests, fault-injection
#                               suite, notebook pairing, dry runs, smoke pipeline,
#                               the study's smoke pipeline, book, book tests, SLURM test)
#   make colab-test             each stage notebook alone, as in a fresh Colab runtime
#   make slurm-test             the smoke pipeline through workflow/profiles/slurm on
#                               a single-node SLURM it starts (root; apt; minutes)
#   make clean                  remove the built book and caches (keeps results/)
#
# Variables: PROFILE (smoke, cpu, paper, paper_cifar100, paper_svhn, gpu; default cpu),
# DEVICE (cpu or cuda; default cpu), CORES (default 2), SNAKEFLAGS (extra
# Snakemake options, e.g. SNAKEFLAGS="--forcerun distill" or "-n").
# Note: `make test` writes book/_generated/ from the smoke profile; run
# `make book PROFILE=...` afterwards to get the book of another profile back.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PROFILE ?= cpu
DEVICE ?= cpu
CORES ?= 2
SNAKEFLAGS ?=
VENV ?= .venv
PYTHON ?= python3

PY := $(VENV)/bin/python
# Every command of the test suite runs headless and prints as it goes, whoever calls it.
export MPLBACKEND ?= Agg
export PYTHONUNBUFFERED ?= 1
# Tests that lack a real dataset skip and append to this file (tests/conftest.py);
# `make test` empties it first and fails at its end if it is not empty.
SKIP_LOG := .test-skips.log
SNAKEMAKE := $(VENV)/bin/snakemake -s workflow/Snakefile
PROFILES := $(basename $(notdir $(wildcard lsslib/_profiles/*.yaml)))
SETUP_STAMP := $(VENV)/.lsslib-installed

.PHONY: help setup data pipeline unlock book study study-run test test-start test-end lint unit faults colab-test cache-tests notebooks-paired dry-runs book-tests slurm-test clean

help:
	@sed -n '1,23p' Makefile | sed 's/^# \{0,1\}//'

# --- environment -----------------------------------------------------------
setup: $(SETUP_STAMP)

# torch and torchvision come unpinned from the package index (pyproject.toml).
$(SETUP_STAMP): pyproject.toml
	@if [[ ! -x $(PY) ]]; then echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install -e '.[book,dev]'
	@touch $@

# --- data ------------------------------------------------------------------
# Nothing to download here: lsslib looks in data_root, $$LSS_DATA_ROOT, ./data,
# a shared/data folder beside the checkout (see lsslib/data.py) and falls back to torchvision's download.
# Fashion-MNIST comes from Debian's package dataset-fashion-mnist (installed here
# when missing and apt-get can run; otherwise the message says what to install).
FMNIST_DIR := /usr/share/datasets/fashion-mnist
data: setup
	@if [[ ! -d $(FMNIST_DIR) ]]; then \
	  if command -v apt-get >/dev/null && [[ "$$(id -u)" == 0 ]]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST: install Debian's package dataset-fashion-mnist (apt-get, as root)"; fi; fi
	@$(PY) -c "from lsslib import datasets; from lsslib.data import find_data_root, cache_dir; \
	[print(f'{d:13s}', find_data_root(d) or 'not found: torchvision will download into ./data') \
	 for d in datasets.names() if not datasets.get(d).root_required]; print('cache        ', cache_dir())"

# --- experiments -----------------------------------------------------------
# Jobs a killed run left half-done are redone (--rerun-incomplete); a failing
# job's log is printed (--show-failed-logs). Wall time and peak memory of the
# whole run go to results/<profile>/pipeline_time.txt (kept as is when Snakemake
# finds nothing to do, or on a dry run) and, for the book, next to the summary's
# files in book/_generated/.
pipeline: setup
	$(PY) workflow/scripts/timed.py --out results/$(PROFILE)/pipeline_time.txt \
	  --watch results/$(PROFILE)/logs \
	  --keep-if "Nothing to be done" --keep-if "This was a dry-run" -- \
	  $(SNAKEMAKE) --configfile lsslib/_profiles/$(PROFILE).yaml \
	  --config device=$(DEVICE) --cores $(CORES) --rerun-incomplete --show-failed-logs \
	  $(SNAKEFLAGS)
	@if [[ -f results/$(PROFILE)/pipeline_time.txt && -d book/_generated ]]; then \
	  cp results/$(PROFILE)/pipeline_time.txt book/_generated/pipeline_time.txt; fi

# After a crash or a kill, Snakemake keeps its lock: release it, then rerun
# `make pipeline` (or `make book`), which redoes only unfinished jobs.
unlock: setup
	$(SNAKEMAKE) --configfile lsslib/_profiles/$(PROFILE).yaml --unlock

book: data pipeline
	bash book/build.sh

# The study (lsslib/_profiles/study.yaml: 3 distillation seeds, the
# parameterisation x labels factorial, label-robust, best-iteration and cross-
# architecture evaluations; 72 min on 2 cores on 2026-12-01). Its book inputs go to
# results/study/book (not book/_generated); its records of record to records/study.
# The evidence profiles run the same way (make study STUDY=tuning first, then
# STUDY=evidence, evidence_fmnist, evidence_ipc10; their headers give the estimated time).
STUDY ?= study
study: study-run
	$(PY) workflow/scripts/keep_records.py results/$(STUDY) records/$(STUDY)

study-run: setup
	$(PY) workflow/scripts/timed.py --out results/$(STUDY)/pipeline_time.txt \
	  --watch results/$(STUDY)/logs \
	  --keep-if "Nothing to be done" --keep-if "This was a dry-run" -- \
	  $(SNAKEMAKE) --configfile lsslib/_profiles/$(STUDY).yaml \
	  --config device=$(DEVICE) book_dir=results/$(STUDY)/book --cores $(CORES) \
	  --rerun-incomplete --show-failed-logs $(SNAKEFLAGS)

# --- checks ----------------------------------------------------------------
test: setup data test-start lint unit faults notebooks-paired dry-runs
	$(MAKE) pipeline PROFILE=smoke DEVICE=cpu
	$(MAKE) colab-test REQUIRE_PIPELINE=1
	$(MAKE) study-run STUDY=smoke_study DEVICE=cpu
	$(MAKE) study-run STUDY=smoke_evidence DEVICE=cpu
	$(MAKE) cache-tests
	bash book/build.sh
	$(MAKE) book-tests
	$(MAKE) slurm-test
	$(MAKE) test-end

# The data every test needs is found as `make data` shows (nothing to set); a test
# that could not find it was skipped and is named here, so the run fails.
test-start:
	@rm -f $(SKIP_LOG)

test-end:
	@if [[ -s $(SKIP_LOG) ]]; then \
	  echo "make test: these tests were skipped for lack of data, so the run does not pass:"; \
	  cat $(SKIP_LOG); exit 1; fi
	@echo "make test: every check ran (no test skipped for lack of data)"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: setup
	$(VENV)/bin/pytest tests/unit

# Kills after every file operation of a write, concurrent writers, a simulated full
# disk, corrupted files, respelled paths; prints a table of cases and outcomes.
faults: setup
	$(VENV)/bin/pytest tests/faults

# The tests that need the decoded CIFAR-10 and its ZCA (the GPU suite's CPU run, the
# real-data ZCA round trip): skipped by `unit` on a cold cache, run here after the
# smoke pipeline has filled it, where a missing cache is a failure.
cache-tests: setup
	LSS_REQUIRE_CIFAR_CACHE=1 $(VENV)/bin/pytest tests/unit/test_gpu_suite.py tests/unit/test_lss_data.py

# Each of the seven stage notebooks alone in an empty folder, installed from a wheel of
# this checkout, with google.colab faked (the test hands it the offline CIFAR-10 it finds).
# After the smoke pipeline (as in `make test`) each notebook's artifacts are also
# compared with the pipeline's: a notebook alone must write what the pipeline writes.
REQUIRE_PIPELINE ?=
colab-test: setup
	LSS_REQUIRE_PIPELINE=$(REQUIRE_PIPELINE) $(VENV)/bin/pytest tests/colab

# The .py (jupytext percent) files are the source; each committed .ipynb must be
# what jupytext makes of its .py. `--update` keeps the .ipynb's outputs and
# metadata, so the .ipynb changes only if its cells differ from the .py. We
# compare checksums before and after instead of `git diff`, so the check means
# the same in a fresh clone and in a working tree with uncommitted edits.
notebooks-paired: setup
	@if ! compgen -G 'notebooks/*.py' >/dev/null; then \
	  echo "notebooks-paired: no notebooks/*.py yet, skipped"; exit 0; fi; \
	before=$$(for f in notebooks/*.py; do cksum "$${f%.py}.ipynb" 2>/dev/null || echo "missing $${f%.py}.ipynb"; done); \
	$(VENV)/bin/jupytext --quiet --to ipynb --update notebooks/*.py; \
	after=$$(for f in notebooks/*.py; do cksum "$${f%.py}.ipynb"; done); \
	if [[ "$$before" != "$$after" ]]; then \
	  diff <(echo "$$before") <(echo "$$after") || true; \
	  echo "notebooks-paired: the .ipynb above were out of date with their .py and have been" \
	       "rewritten by 'jupytext --to ipynb --update'; review and commit them"; exit 1; \
	fi; echo "notebooks-paired: every notebooks/*.ipynb matches its .py"

dry-runs: setup
	@for p in $(PROFILES); do \
	  echo "snakemake -n --configfile lsslib/_profiles/$$p.yaml"; \
	  out=$$($(SNAKEMAKE) --configfile lsslib/_profiles/$$p.yaml -n 2>&1) || { echo "$$out"; exit 1; }; \
	  echo "$$out" | grep -m1 -E '^(total|Nothing to be done)' || true; \
	done

book-tests: setup
	$(VENV)/bin/pytest tests/book

# Starts (and stops) its own slurmctld/slurmd/slurmdbd; installs slurm-wlm, munge
# and MariaDB with apt when missing. -s shows the sacct lines it checks.
slurm-test: setup
	PYTHONPATH=$(CURDIR) $(VENV)/bin/pytest tests/slurm -v -s

# --- cleaning --------------------------------------------------------------
# Keeps results/ (hours of compute) and .snakemake/ (what Snakemake knows about
# them); remove those by hand: rm -rf results/<profile> .snakemake
clean:
	rm -rf _build book/_generated .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
