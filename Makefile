# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# Each creates .venv (CPU torch, the pinned stack, this package in editable mode) and the apt tools.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.clipvip-installed
CORES  ?= 2
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export OMP_NUM_THREADS ?= 1
# Rules call the `clipvip` console script: the venv must be first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test test-fast lint bench report clean install-profile

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt scripts/install_system.sh
	bash scripts/install_system.sh
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: a looser requirement pulls a multi-GB CUDA build.
	PIP_CONSTRAINT=$(CURDIR)/requirements/constraints.txt $(PIP) install -q torch==2.13.0
	PIP_CONSTRAINT=$(CURDIR)/requirements/constraints.txt $(PIP) install -q -e '.[test]'
	# Only for the CLIP BPE vocabulary file it ships; open_clip itself is never imported.
	$(PIP) install -q --no-deps open_clip_torch==3.3.0
	touch $(STAMP)

## The main job on the embedded demo: synthetic videos + tiny models, every stage, then the HTML report.
demo: setup
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --cores $(CORES) --report results/report.html
	@echo "Tables: results/tables/retrieval.md   Report: results/report.html"

## The tests (CI runs exactly this).
test: setup
	$(PY) -m pytest -q --durations=20 tests

## Write the SLURM profile once, so that `snakemake --profile slurm` works, e.g.
##   make install-profile PROFILE_ARGS="--account myacct --cpu-partition cpu --gpu-partition gpu --gpus-per-node 4"
## (more flags: --pretrain-nodes, --finetune-nodes, --name, --force; see `clipvip install-profile --help`)
install-profile: setup
	$(VENV)/bin/clipvip install-profile $(PROFILE_ARGS)

## Python (ruff, pinned in the test extras) and workflow lint; tests/test_workflow.py runs this target.
lint: setup
	$(VENV)/bin/ruff check clipvip tests benchmarks scripts
	$(VENV)/bin/snakemake --lint

bench: setup
	for b in benchmarks/*.py; do $(PY) $$b --quick | tail -n 1; done

clean:
	rm -rf results .snakemake
