"""`trsllava`: small command-line entry points beside the Snakemake workflow.

    trsllava figures [--results results] [--config config.yaml]   redraw tables and figures from existing evaluations
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from .errors import TrsllavaError


def _figures(args) -> None:
    from . import steps

    config = yaml.safe_load(Path(args.config).read_text()) if Path(args.config).is_file() else {}
    results = Path(args.results or config.get("results", "results"))
    metrics = sorted(results.glob("*/eval/*/*.metrics.parquet"))
    if not metrics:
        raise TrsllavaError(f"no evaluation results (*/eval/*/*.metrics.parquet) under {results}")
    steps.ablation_tables(config, metrics, results)
    steps.figures(config, results / "ablation.parquet", results / "figures")
    print(f"redrew tables and figures from {len(metrics)} evaluation(s) into {results}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trsllava", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    figures = commands.add_parser("figures", help="redraw ablation tables and figures from existing evaluation results")
    figures.add_argument("--results", help="results folder (default: config's results)")
    figures.add_argument("--config", default="config.yaml", help="config for figure options (default config.yaml)")
    figures.set_defaults(handler=_figures)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        args.handler(args)
    except TrsllavaError as error:
        print(f"trsllava: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
