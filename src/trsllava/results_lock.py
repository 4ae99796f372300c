"""One workflow run at a time per results directory.

Snakemake locks its working directory (``.snakemake/locks``), but two working directories may point
their ``results:`` at the same folder, and two runs writing the same outputs corrupt each other's
work. The workflow therefore holds ``<results>/.trsllava.lock`` while it runs (``onstart``), and a
second run refuses at start in one line naming the run that holds it.

The lock is a kernel advisory lock (``fcntl.flock``) on that file, held by the Snakemake process:
the kernel releases it when that process exits, however it exits (success, error, a crash,
SIGKILL), so no stale lock survives a killed run on the same machine; the file itself stays and records the last
holder. On a network file system whose lock service lost track of a crashed client the message
says how to recover (make sure no run is active, delete the file). Where the file system cannot
lock at all, a warning says so and the run goes on unguarded.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from .errors import TrsllavaError

log = logging.getLogger(__name__)
LOCK_NAME = ".trsllava.lock"


class ResultsLock:
    """The lock of one results directory; ``acquire`` raises ``TrsllavaError`` when another run holds it."""

    def __init__(self, results: str | os.PathLike):
        self.results = Path(results)
        self.path = self.results / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, workdir: str | os.PathLike | None = None) -> bool:
        """Take the lock (True), or return False where the file system cannot lock (warned)."""
        import fcntl

        self.results.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise TrsllavaError(
                f"results directory {self.results.resolve()} is in use by another snakemake run ({holder}); wait for it "
                f"to finish or stop it, or give this run another `results:` folder. If no such run is active (a machine "
                f"that crashed, on a network file system), delete {self.path.resolve()} and start again"
            ) from None
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                log.warning("cannot lock %s (%s): a second run on the same results folder would not be detected",
                            self.path, os.strerror(error.errno))
                return False
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "workdir": str(Path(workdir or os.getcwd()).resolve()),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lock up (closing the descriptor releases it); the file stays."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, working directory {holder.get('workdir')}, "
            f"started {holder.get('started')}")
