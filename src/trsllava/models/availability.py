"""Whether a model can be had on this machine, decided once per run by the job that fetches it.

A generating captioner or a CLIP baseline names a model: a local folder (or checkpoint file), or a
Hugging Face hub id. One local job per model (``fetch_captioner_model`` / ``fetch_clip_model``, both
Snakemake checkpoints) finds it in the cache or downloads it, and writes a *model record*:

    {"kind": "captioner" | "clip", "name", "config_key", "model", "revision", "path", "source",
     "available": bool, "required": bool, "reason": str | None, "ways_out": str | None}

When the hub cannot be reached (or refuses: gated, private, unknown id) and no copy is cached, the
record says ``available: false`` with the reason, and the plan (the workflow's input functions, which
read the records after the checkpoint) leaves that model's rows out: the rest of the experiment runs
to the end. An entry with ``required: true`` stops the run instead, with one line (printed by the
workflow's ``onsuccess`` handler, see ``required_failures``). The decision is made in the job, never
while the Snakefile is parsed: cluster jobs parse it on nodes that may not reach the hub.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ..errors import TrsllavaError

log = logging.getLogger(__name__)

# Files a transformers or vLLM load never reads: other frameworks' weights and exports.
IGNORED_FILES = ["onnx/*", "*.onnx", "*.onnx_data", "*.gguf", "*.msgpack", "*.h5", "flax_model*", "tf_model*",
                 "*.ot", "*.mlmodel", "coreml/*", "openvino/*"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelUnavailable(TrsllavaError):
    """The model cannot be had here: not a local folder, not in the Hugging Face cache, and the hub
    cannot be reached (or refuses it). ``reason`` is a short phrase for reports."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def ways_out(config_key: str) -> str:
    """The two ways to get a skipped model, for messages, the manifest and the run summary."""
    return (f"To include it, set {config_key}.model to a local model folder, or run on a machine that reaches the "
            f"Hugging Face hub (the weights are then cached once)")


def is_hub_id(model: str) -> bool:
    return bool(HUB_ID.match(model)) and not model.startswith((".", "/", "~")) and not Path(model).expanduser().exists()


def fetch_from_hub(what: str, model: str, revision: str | None = None,
                   allow_patterns: list[str] | None = None) -> tuple[Path, str | None]:
    """(snapshot folder, commit) of hub ``model`` at ``revision``: from the cache, else downloaded once.

    ``what`` names the entry in messages (e.g. "captioner 'smolvlm'"). Raises ModelUnavailable when the
    hub cannot be reached, refuses the model (gated, private, unknown id or revision) and nothing is
    cached; huggingface_hub falls back to a cached snapshot by itself when the network fails.
    ``allow_patterns`` restricts the download (e.g. a tokenizer's files only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    log.info("%s: fetching %s%s from the Hugging Face hub (once; later runs use the cache)", what, model,
             f"@{revision}" if revision else "")
    try:
        path = Path(snapshot_download(model, revision=revision, ignore_patterns=IGNORED_FILES,
                                      allow_patterns=allow_patterns))
    except GatedRepoError as error:
        raise ModelUnavailable(f"{what}: {model} is gated on the hub; accept its licence and set HF_TOKEN",
                               "gated on the hub (accept its licence, set HF_TOKEN)") from error
    except RevisionNotFoundError as error:
        raise ModelUnavailable(f"{what}: revision '{revision}' does not exist for {model}",
                               f"revision '{revision}' not found on the hub") from error
    except RepositoryNotFoundError as error:
        raise ModelUnavailable(f"{what}: no model '{model}' on the hub (or it is private: set HF_TOKEN)",
                               "not found on the hub (or private)") from error
    except (LocalEntryNotFoundError, OSError) as error:
        # offline mode without a cached copy, no route to the hub, DNS failure: all one story
        cause = first_cause(error)
        raise ModelUnavailable(f"{what}: cannot fetch {model} from the Hugging Face hub ({cause}) and it is not in "
                               f"the local cache", f"hub unreachable ({cause}) and not in the local cache") from error
    commit = path.name if path.parent.name == "snapshots" else revision
    log.info("%s: %s at commit %s in %s", what, model, commit, path)
    return path, commit


def first_cause(error: BaseException) -> str:
    """A short reason: the network error underneath if there is one, else the error's first line."""
    text = str(error)
    found = re.search(r"Got: (\w+Error: [^\n]+)", text)
    if found:
        return found.group(1)
    if "outgoing traffic has been disabled" in text:
        return "HF_HUB_OFFLINE is set"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def folder_commit(folder: Path) -> str | None:
    """A hub snapshot folder's commit (``.../snapshots/<40 hex>``); None for a plain folder."""
    resolved = folder.resolve()
    if resolved.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", resolved.name):
        return resolved.name
    return None


def record(kind: str, name: str, config_key: str, entry: dict, resolve) -> dict:
    """The model record of one entry: ``resolve(entry)`` returns the found fields ({"model", "revision",
    "path", "source", ...}) or raises ModelUnavailable, which becomes ``available: false``. Other
    TrsllavaErrors (a misspelt local path, a malformed id) are configuration errors and propagate."""
    base = {"kind": kind, "name": name, "config_key": config_key, "model": str(entry.get("model")),
            "required": bool(entry.get("required", False))}
    try:
        found = resolve(entry)
    except ModelUnavailable as error:
        log.warning("%s: skipped: %s. %s", name, error, ways_out(config_key))
        return {**base, "revision": entry.get("revision"), "path": None, "source": None, "available": False,
                "reason": error.reason, "message": str(error), "ways_out": ways_out(config_key)}
    return {**base, **found, "available": True, "reason": None, "message": None, "ways_out": None}


def read_records(paths) -> list[dict]:
    """Model records from their files (missing files are skipped: a checkpoint not yet run)."""
    records = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            records.append(json.loads(path.read_text(encoding="utf-8")))
    return records


def skipped(records: list[dict]) -> list[dict]:
    """The records of models left out of this run (unavailable and not required)."""
    return [r for r in records if not r.get("available", True) and not r.get("required")]


def required_failures(records: list[dict]) -> list[str]:
    """One line per required model that cannot be had: the run fails with these."""
    return [f"{r['message']}; {r['config_key']} says required: true, so the run stops. {r['ways_out']}"
            for r in records if not r.get("available", True) and r.get("required")]


def skip_line(record_: dict) -> str:
    """One line about a skipped model, for the run summary and the figures' footer."""
    label = f"clip:{record_['name']}" if record_["kind"] == "clip" else record_["name"]
    return f"{label} ({record_['kind']}, {record_['model']}): {record_['reason']}"


def availability_table(records: list[dict]):
    """One row per fetched model (a polars frame): kind, name, model, available, required, where it
    was found, or why not and how to include it; the report's "models" table."""
    import polars as pl

    schema = {"kind": pl.String, "name": pl.String, "model": pl.String, "available": pl.Boolean, "required": pl.Boolean,
              "source": pl.String, "revision": pl.String, "reason": pl.String, "to_include_it": pl.String}
    return pl.DataFrame([{"kind": r["kind"], "name": r["name"], "model": r["model"], "available": r["available"],
                          "required": r.get("required", False), "source": r.get("source"), "revision": r.get("revision"),
                          "reason": r.get("reason"), "to_include_it": r.get("ways_out")} for r in records], schema=schema)
