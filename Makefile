# Thin wrappers over the `pipeline` CLI. Every target installs what it needs first (make setup).
#   make train FOLD=0 CONFIG=configs/leaves.yaml SET="train.epochs=5 image.size=160"
#   make predict CONFIG=configs/leaves.yaml TTA=d4
#   make ensemble RUNS="exp-a exp-b" METHOD=weighted NAME=blend
#   make submit RUN=blend MESSAGE="a+b d4"
#   make train FOLD=0 GPUS=2        one fold, data-parallel over 2 devices (torchrun; gloo on CPU)
#   make train-all                  every fold a Ray task, one per GPU of this machine (or of $RAY_ADDRESS's cluster)
#   make predict GPUS=4             4 folds at once, one per device (Ray tasks on this machine)
#   make bench                      pipeline vs bare compute loop, loader, TTA, ensembling
#   make tune CONFIG=configs/leaves.yaml TRIALS=24 WORKERS=2   an Optuna study, 2 workers (Ray tasks)
#   make gpu-wheels; make gpu-check  on a GPU machine: pytest -m gpu, CUDA bench per precision, a demo run
#   make docs                       the documentation site -> site/ (mkdocs-material, --strict); .venv/bin/mkdocs serve
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/leaves.yaml
FOLD ?= 0
SET ?=
GPUS ?= 1
TRIALS ?= 16
WORKERS ?= 1
# the leaves dev set when ../shared is there, else the embedded digits (bench writes them if missing)
BENCH_CONFIG ?= $(if $(wildcard ../shared/data/leaves-dev/train.csv),configs/dev/bench.yaml,configs/bench-demo.yaml)
# and a text row (MiniLM on the review sentences) where ../shared has them
BENCH_TEXT ?= $(if $(wildcard ../shared/weights/all-MiniLM-L6-v2/config.json),--text-config configs/dev/sentiment-minilm.yaml,)
# and a segmentation row: a U-Net on TGS Salt where ../shared has it, else on the embedded demo masks
BENCH_SEGMENT ?= --segment-config $(if $(wildcard ../shared/data/tgs-salt/train.csv),configs/dev/tgs-salt.yaml,configs/demo-seg.yaml)
SETS := $(foreach s,$(SET),--set $(s))

# gpu-check: on a GPU machine's own python3 (no venv, no registry; gpu-wheels/ carries what it lacks)
.PHONY: gpu-check gpu-wheels setup test docs test-slow fuzz lint bench demo demo-detection demo-sequence demo-segmentation prepare train train-all predict ensemble submit tune clean-venv

setup: $(VENV)/.installed

# Re-installs only when pyproject.toml changes; torch/torchvision come first so pip takes the
# release on local disk (PIP_FIND_LINKS) instead of resolving a multi-GB CUDA build from PyPI.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch>=2.6" "torchvision>=0.21"
	$(BIN)/python -m pip install -q -e ".[dev,text,series,kaggle,cluster,segmentation]"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

fuzz: setup  # fresh random CSVs for every reader (make test replays a fixed set)
	FUZZ_RANDOM=1 FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} $(BIN)/python -m pytest -q tests/test_fuzz.py

# The site (mkdocs.yml, docs/): only mkdocs-material (the docs extra of pyproject.toml) is installed, not the
# package; the config reference is generated from pipeline/core/config.py. --strict: a warning (a broken link or
# anchor, an uncommented config field) fails the build.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

$(VENV)/.docs-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "mkdocs-material>=9.5"
	touch $@

lint: setup  # style (ruff) and the architecture: the layer contracts in pyproject.toml (lint-imports)
	$(BIN)/ruff check pipeline tests scripts
	$(BIN)/lint-imports

demo: setup
	$(BIN)/pipeline demo

demo-detection: setup
	$(BIN)/pipeline demo --task detection

demo-sequence: setup
	$(BIN)/pipeline demo --task sequence

demo-segmentation: setup
	$(BIN)/pipeline demo --task segmentation

prepare: setup
	$(BIN)/pipeline prepare --config $(CONFIG) $(SETS)

train: prepare
ifeq ($(GPUS),1)
	$(BIN)/pipeline train --config $(CONFIG) --fold $(FOLD) $(SETS)
else
	$(BIN)/torchrun --standalone --nproc_per_node=$(GPUS) -m pipeline train --config $(CONFIG) --fold $(FOLD) $(SETS)
endif

# Every fold a Ray task asking for one GPU (a Ray instance on this machine, or $RAY_ADDRESS's cluster): as many
# folds at once as there are GPUs; fold locks (fold{k}/train.lock) still keep two people off one fold.
train-all: prepare
	$(BIN)/pipeline train --config $(CONFIG) --fold all --on ray $(SETS)

gpu-check:  # pytest -m gpu, bench per precision, a short demo run, a table of ratios (scripts/gpu_check.py)
	$(PYTHON) scripts/gpu_check.py

gpu-wheels: setup  # wheels a bare offline GPU machine lacks -> gpu-wheels/ (GPU_PYTHON_VERSION, GPU_PRESENT=freeze.txt)
	$(BIN)/python scripts/gpu_wheels.py --python-version $(or $(GPU_PYTHON_VERSION),3.12) $(if $(GPU_PRESENT),--present $(GPU_PRESENT))

tune: setup
	$(BIN)/pipeline tune --config $(CONFIG) --trials $(TRIALS) --workers $(WORKERS) $(SETS)

bench: setup
	$(BIN)/pipeline bench --config $(BENCH_CONFIG) $(BENCH_TEXT) $(BENCH_SEGMENT) $(SETS)

predict: setup
	$(BIN)/pipeline predict --config $(CONFIG) --fold $(or $(FOLD_PREDICT),all) $(SETS) $(if $(TTA),--tta $(TTA)) --gpus $(GPUS)

ensemble: setup
	$(BIN)/pipeline ensemble $(RUNS) --method $(or $(METHOD),weighted) $(if $(NAME),--name $(NAME))

submit: setup
	$(BIN)/pipeline submit $(RUN) $(if $(MESSAGE),--message "$(MESSAGE)")

clean-venv:
	rm -rf $(VENV)
