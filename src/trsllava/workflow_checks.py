"""Checks of the workflow's environment that run when the Snakefile is parsed (no network)."""

from __future__ import annotations

import importlib.metadata

from packaging.version import Version

from .errors import TrsllavaError

# Snakemake 9.5.1 stopped validating the config inside cluster jobs (snakemake issue 3601), so the
# schema's defaults never reach them: every SLURM job fails with a KeyError on a defaulted key
# (snakemake issues 3614 and 3921); fixed in 9.14.8. pyproject.toml and envs/ exclude the range too.
BROKEN_SNAKEMAKE = (Version("9.5.1"), Version("9.14.7"))


def check_snakemake_version(version: str | None = None) -> None:
    """Refuse the Snakemake releases that drop schema defaults in cluster jobs, naming the fix."""
    version = version or importlib.metadata.version("snakemake")
    low, high = BROKEN_SNAKEMAKE
    if low <= Version(version) <= high:
        raise TrsllavaError(f"Snakemake {version} drops the config schema's defaults in cluster jobs (snakemake issues "
                            f"3614, 3921; every job would fail with a KeyError): install snakemake>=9.14.8,<10, e.g. "
                            f"pip install 'snakemake>=9.14.8,<10'")
