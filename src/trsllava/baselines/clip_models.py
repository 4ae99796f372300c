"""Where a CLIP baseline's weights are: fetched once per run by the ``fetch_clip_model`` checkpoint.

The record (see ``trsllava.models.availability``) names the folder or checkpoint file that
``clip_embed`` loads, and for an open_clip checkpoint file also the folder of its CLIP tokenizer. A hub
id that cannot be fetched and is not cached makes the baseline ``available: false``: its row is left
out of the run, and said so in the summary, the manifest and the headline figure.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrsllavaError
from ..models.availability import fetch_from_hub, folder_commit, is_hub_id, record
from .open_clip_convert import DEFAULT_TOKENIZER, is_open_clip_checkpoint

# What a CLIP tokenizer needs (the open_clip path loads only the tokenizer from its source).
TOKENIZER_FILES = ["tokenizer*", "vocab.json", "merges.txt", "special_tokens_map.json", "*.txt"]


def _resolve_source(name: str, key: str, source: str, allow_patterns=None) -> tuple[str, str | None, str]:
    """(path, commit, source kind) of a folder, file or hub id named by ``baselines.clip.models.<name>.<key>``."""
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve()), folder_commit(path) if path.is_dir() else None, "local"
    if not is_hub_id(source):
        raise TrsllavaError(f"config: baselines.clip.models.{name}.{key} is '{source}': no such file or folder, "
                            "and not a hub id org/name")
    folder, commit = fetch_from_hub(f"CLIP baseline '{name}'", source, allow_patterns=allow_patterns)
    return str(folder), commit, "hub"


def resolve_clip(name: str, entry: dict) -> dict:
    """``{"model", "revision", "path", "source", "tokenizer_path"}`` of one CLIP entry; raises
    ModelUnavailable (hub unreachable, not cached) or TrsllavaError (a path that does not exist)."""
    source = str(entry["model"])
    if is_open_clip_checkpoint(source):
        if not Path(source).expanduser().is_file():
            raise TrsllavaError(f"config: baselines.clip.models.{name}.model: open_clip checkpoint file not found: {source}")
        tokenizer, _, _ = _resolve_source(name, "tokenizer", str(entry.get("tokenizer", DEFAULT_TOKENIZER)), TOKENIZER_FILES)
        return {"model": source, "revision": None, "path": str(Path(source).expanduser().resolve()),
                "source": "open_clip checkpoint", "tokenizer_path": tokenizer}
    path, commit, kind = _resolve_source(name, "model", source)
    return {"model": source, "revision": commit, "path": path, "source": kind, "tokenizer_path": None}


def clip_record(name: str, entry: dict) -> dict:
    return record("clip", name, f"baselines.clip.models.{name}", entry, lambda e: resolve_clip(name, e))


def loadable_entry(entry: dict, model_record: dict) -> dict:
    """The config entry with ``model`` (and ``tokenizer``) replaced by the recorded local paths."""
    loadable = {**entry, "model": model_record["path"]}
    if model_record.get("tokenizer_path"):
        loadable["tokenizer"] = model_record["tokenizer_path"]
    return loadable
