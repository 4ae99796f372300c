"""Resolve a captioner's model once, before its shard jobs start: a local folder, or a hub snapshot.

One job downloads (or finds in the cache) the weights and records where they are and which commit
they are, so that N shard jobs neither race to download the same files nor disagree on the
revision; they load the recorded folder and stamp every caption with the recorded id and commit.
Where the hub cannot be reached and the model is not cached (an air-gapped machine), the error is
one line naming the two ways out.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..errors import TrsllavaError

log = logging.getLogger(__name__)

# Files a transformers or vLLM load never reads: other frameworks' weights and exports.
IGNORED_FILES = ["onnx/*", "*.onnx", "*.onnx_data", "*.gguf", "*.msgpack", "*.h5", "flax_model*", "tf_model*",
                 "*.ot", "*.mlmodel", "coreml/*", "openvino/*"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
OFFLINE_RUN = "make run-offline (snakemake --cores N --configfile config.offline.yaml --replace-workflow-config)"


def ways_out(captioner: str) -> str:
    return (f"Two ways out: set captioners.{captioner}.model to a local model folder in config.yaml, "
            f"or run the offline config that uses imported caption sets: {OFFLINE_RUN}")


def resolve_model(captioner: str, entry: dict) -> dict:
    """Where the captioner's model is: ``{"model", "revision", "path", "source"}``.

    ``path`` is what the backend loads (None for an OpenAI-compatible server, which has its own)."""
    model = entry.get("model")
    if not model:
        raise TrsllavaError(f"config: captioners.{captioner}.model is required for backend '{entry['backend']}'")
    model = str(model)
    if entry["backend"] == "openai":
        return {"model": model, "revision": entry.get("revision"), "path": None, "source": f"server {entry.get('base_url')}"}
    folder = Path(model).expanduser()
    if folder.is_dir():
        return {"model": model, "revision": entry.get("revision") or _folder_commit(folder),
                "path": str(folder.resolve()), "source": "local folder"}
    if not HUB_ID.match(model):
        raise TrsllavaError(f"config: captioners.{captioner}.model '{model}' is neither an existing folder nor a "
                            f"hub id of the form org/name")
    return _fetch_from_hub(captioner, model, entry.get("revision"))


def _fetch_from_hub(captioner: str, model: str, revision: str | None) -> dict:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    log.info("captioner %s: fetching %s%s from the Hugging Face hub (once; later runs use the cache)",
             captioner, model, f"@{revision}" if revision else "")
    try:
        path = Path(snapshot_download(model, revision=revision, ignore_patterns=IGNORED_FILES))
    except GatedRepoError as error:
        raise TrsllavaError(f"captioner '{captioner}': {model} is gated on the hub; accept its licence and set "
                            f"HF_TOKEN, or set captioners.{captioner}.model to a local model folder") from error
    except RevisionNotFoundError as error:
        raise TrsllavaError(f"config: captioners.{captioner}.revision '{revision}' does not exist for {model}") from error
    except RepositoryNotFoundError as error:
        raise TrsllavaError(f"config: captioners.{captioner}.model: no model '{model}' on the hub "
                            f"(or it is private: set HF_TOKEN)") from error
    except (LocalEntryNotFoundError, OSError) as error:
        # Offline mode without a cached copy, no route to the hub, DNS failure: all one story.
        raise TrsllavaError(f"captioner '{captioner}': cannot fetch {model} from the Hugging Face hub "
                            f"({_first_cause(error)}) and it is not in the local cache. {ways_out(captioner)}") from error
    commit = path.name if path.parent.name == "snapshots" else revision
    log.info("captioner %s: %s at commit %s in %s", captioner, model, commit, path)
    return {"model": model, "revision": commit, "path": str(path), "source": "hub"}


def _first_cause(error: BaseException) -> str:
    """A short reason: the network error underneath if there is one, else the error's first line."""
    text = str(error)
    found = re.search(r"Got: (\w+Error: [^\n]+)", text)
    if found:
        return found.group(1)
    if "outgoing traffic has been disabled" in text:
        return "HF_HUB_OFFLINE is set"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _folder_commit(folder: Path) -> str | None:
    """A hub snapshot folder's commit (``.../snapshots/<40 hex>``); None for a plain folder."""
    resolved = folder.resolve()
    if resolved.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", resolved.name):
        return resolved.name
    return None


class RecordedModel:
    """A backend whose provenance names the model as configured (hub id and commit), not the cache
    folder it was loaded from; everything else is the wrapped backend's."""

    def __init__(self, backend, record: dict):
        self._backend = backend
        self._record = record

    def describe(self) -> dict:
        described = dict(self._backend.describe())
        described["model_id"] = self._record["model"]
        if self._record.get("revision"):
            described["model_revision"] = self._record["revision"]
        return described

    def __getattr__(self, name):
        return getattr(self._backend, name)
