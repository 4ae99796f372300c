"""Resolve a captioner's model once, before its shard jobs start: a local folder, or a hub snapshot.

One job (the ``fetch_captioner_model`` checkpoint) finds the weights in the cache or downloads them and
records where they are and which commit they are, so that N shard jobs neither race to download the
same files nor disagree on the revision; they load the recorded folder and stamp every caption with
the recorded id and commit. A model that cannot be had (no hub, not cached) is recorded as
unavailable and the captioner is skipped (see ``trsllava.models.availability``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrsllavaError
from ..models.availability import HUB_ID, fetch_from_hub, folder_commit, record
from ..models.availability import ways_out as _ways_out


def ways_out(captioner: str) -> str:
    return _ways_out(f"captioners.{captioner}")


def resolve_model(captioner: str, entry: dict) -> dict:
    """Where the captioner's model is: ``{"model", "revision", "path", "source"}``; ``path`` is what
    the backend loads (None for an OpenAI-compatible server, which has its own). Raises
    ModelUnavailable when a hub id cannot be fetched nor found in the cache, TrsllavaError for a model
    that is neither an existing folder nor a hub id."""
    model = entry.get("model")
    if not model:
        raise TrsllavaError(f"config: captioners.{captioner}.model is required for backend '{entry['backend']}'")
    model = str(model)
    if entry["backend"] == "openai":
        return {"model": model, "revision": entry.get("revision"), "path": None, "source": f"server {entry.get('base_url')}"}
    folder = Path(model).expanduser()
    if folder.is_dir():
        return {"model": model, "revision": entry.get("revision") or folder_commit(folder),
                "path": str(folder.resolve()), "source": "local folder"}
    if not HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise TrsllavaError(f"config: captioners.{captioner}.model '{model}' is neither an existing folder nor a "
                            f"hub id of the form org/name")
    path, commit = fetch_from_hub(f"captioner '{captioner}'", model, entry.get("revision"))
    return {"model": model, "revision": commit, "path": str(path), "source": "hub"}


def captioner_record(captioner: str, entry: dict) -> dict:
    """The model record of a generating captioner (see trsllava.models.availability)."""
    return record("captioner", captioner, f"captioners.{captioner}", entry, lambda e: resolve_model(captioner, e))


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
