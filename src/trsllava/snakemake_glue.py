"""Run a stage from a Snakemake ``script:``: log to the rule's log file, turn user errors into one line."""

from __future__ import annotations

import logging
import sys

from .errors import TrsllavaError


def run(snakemake, stage, **kwargs) -> None:
    handlers = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    # faiss logs at INFO the AVX2 build it tried before the generic one it loads
    # ("ModuleNotFoundError: No module named 'faiss.swigfaiss_avx2'"), which reads like a failure
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        stage(snakemake.config, **kwargs)
    except TrsllavaError as error:
        logging.getLogger("trsllava").error("%s", error)
        sys.exit(f"trsllava: {error}")
