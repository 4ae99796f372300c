"""Atomic output writing: a crash, a kill or a full disk never leaves a half-written file under its
final name.

Every file is written to a temporary sibling and renamed into place (rename is atomic on POSIX
within one filesystem), so Snakemake and resumable stages can trust that a file that exists is whole;
an error while writing (ENOSPC, EFBIG, a kill) leaves the previous file, if any, untouched and the
temporary one removed (or, after SIGKILL, left as a dot-file that the next write of the same output
removes). Directory outputs (embedding caches, BM25 and FAISS index folders) are built in a
temporary sibling folder and renamed into place the same way (``atomic_directory``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl


log = logging.getLogger(__name__)


def _remove_leftovers(final: Path, pattern: str) -> None:
    """Temporary siblings of ``final`` left by a writer killed before it could clean up. One job
    writes an output at a time (Snakemake's lock and the results lock), so they are stale."""
    for stale in final.parent.glob(pattern):
        log.info("removing %s, left by an interrupted write of %s", stale, final)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_if_created(path: Path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain open()/mkdir() would have given it: tempfile creates files 0600
    and folders 0700 (private), which would leave every result unreadable to collaborators and web
    servers whatever the user's umask says."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final, f".{glob_escape(final.name)}.*.tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _as_if_created(tmp_path)
        os.replace(tmp_path, final)
    except OSError as exc:  # a full disk, a file size limit, ...: say which output, and that nothing half is kept
        message = f"{final} not written, any earlier version is kept: {exc.strerror or exc}"
        raise (OSError(exc.errno, message) if exc.errno else OSError(message)) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; when the block succeeds, it replaces
    ``path`` (an existing folder there, a stale output, is removed first), else it is removed.
    Readers (Snakemake, ``trsllava search``) therefore see the whole folder or none."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final, f".{glob_escape(final.name)}.tmp-*")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _as_if_created(tmp, directory=True)
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters bracketed, for a literal match in ``Path.glob``."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_parquet(frame: pl.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


def write_csv(frame: pl.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        frame.write_csv(tmp)


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj, path: str | os.PathLike) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def write_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
