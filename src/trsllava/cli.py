"""`trsllava`: small command-line entry points beside the Snakemake workflow.

    trsllava figures [--results results] [--config config.yaml]   redraw tables and figures from existing evaluations
    trsllava summary [--results results]                          the run summary again (best rows, skipped models, paths)
    trsllava search "QUERY" [-k 10] [--json] [--html page.html]      rank a built archive's images by a text query
    trsllava search --image ID_OR_FILE [--captions human|generated]  closest captions to one gallery image
    trsllava convert-clip CHECKPOINT.pt --out FOLDER [--tokenizer SRC]  an open_clip ViT checkpoint as a HF CLIP folder
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .baselines.open_clip_convert import DEFAULT_TOKENIZER  # a light import: torch loads only when converting
from .errors import TrsllavaError
from .textio import read_yaml


def _figures(args) -> None:
    from . import steps

    config = (read_yaml(args.config, "config") or {}) if Path(args.config).is_file() else {}
    results = Path(args.results or config.get("results", "results"))
    metrics = sorted(results.glob("*/eval/*/*.metrics.parquet"))
    if not metrics:
        raise TrsllavaError(f"no evaluation results (*/eval/*/*.metrics.parquet) under {results}")
    steps.ablation_tables(config, metrics, results)
    steps.figures(config, results / "ablation.parquet", results / "figures", results / "manifest.json")
    print(f"redrew tables and figures from {len(metrics)} evaluation(s) into {results}")


def _summary(args) -> None:
    from .reporting.summary import run_summary

    config = read_yaml(args.config, "config") if Path(args.config).is_file() else {}
    results = Path(args.results or (config or {}).get("results", "results"))
    if not (results / "ablation.parquet").is_file():
        raise TrsllavaError(f"no ablation table under {results} (run the workflow first: snakemake --cores N)")
    records = sorted((results / "models").glob("*.json")) + sorted((results / "models" / "clip").glob("*.json"))
    print(run_summary(config or {}, records, results))


def _search(args) -> None:
    import json

    from .search import image_search, open_archive, text_search
    from .search.gallery_html import write_gallery
    from .search.text_output import format_table

    if (args.query is None) == (args.image is None):
        raise TrsllavaError("search: give either a text query or --image ID_OR_FILE (not both)")
    if args.k < 1:
        raise TrsllavaError(f"search: -k must be at least 1 (got {args.k})")
    config_path = Path(args.config)
    if not config_path.is_file():
        raise TrsllavaError(f"config not found: {config_path} (the config of the run that built the results; --config)")
    config = read_yaml(config_path, "config") or {}
    archive = open_archive(config, str(config_path), Path(args.results) if args.results else None, args.dataset,
                           args.captioner, args.encoder)
    if args.image is not None:
        result = image_search(archive, args.image, k=args.k, captions=args.captions, aggregation=args.aggregation,
                              caption_set=args.caption_set)
    else:
        result = text_search(archive, args.query, k=args.k, aggregation=args.aggregation, caption_set=args.caption_set)
    if args.html:
        from .images import ImageOptions

        write_gallery(result, Path(args.html), ImageOptions.from_config(config))
        print(f"wrote {args.html}", file=sys.stderr)
    print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) if args.json else format_table(result))


def _convert_clip(args) -> None:
    from .baselines.open_clip_convert import convert_to_folder

    out = convert_to_folder(args.checkpoint, args.tokenizer, args.out, args.activation)
    print(f"wrote {out}: use it as baselines.clip.models.<name>.model")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trsllava", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    figures = commands.add_parser("figures", help="redraw ablation tables and figures from existing evaluation results")
    figures.add_argument("--results", help="results folder (default: config's results)")
    figures.add_argument("--config", default="config.yaml", help="config for figure options (default config.yaml)")
    figures.set_defaults(handler=_figures)
    summary = commands.add_parser("summary", help="print the run summary of a results folder (best rows, skipped models, paths)")
    summary.add_argument("--results", help="results folder (default: config's results)")
    summary.add_argument("--config", default="config.yaml", help="config of the run (default config.yaml)")
    summary.set_defaults(handler=_summary)
    search = commands.add_parser(
        "search", help="search a built archive: a text query ranks the images, --image ranks captions",
        description="Rank the gallery images of a built run by a text query (an image scores as its best-matching "
                    "caption, or their mean), or with --image rank captions for one gallery image. Needs the outputs of "
                    "`snakemake <results>/<dataset>/index/<encoder>/<captioner>`.",
    )
    search.add_argument("query", nargs="?", help="the text query")
    search.add_argument("--image", help="image-to-text: an image id of the dataset, or a file path matched to it by file name")
    search.add_argument("--captions", choices=["human", "generated"], default="human",
                        help="with --image: rank the dataset's human captions (queries: the image's generated captions) or "
                             "the generated captions (queries: the image's human captions); default human")
    search.add_argument("-k", "--top", dest="k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--aggregation", choices=["max", "mean"], default="max",
                        help="how an item scores from several texts: best match (default) or mean")
    search.add_argument("--caption-set", help="restrict to one caption set: a prompt, prompt/field (e.g. rsrt/one_sentence) "
                                              "or fused (default: every text of the captioner)")
    search.add_argument("--config", default="config.yaml", help="config of the run, for datasets and encoder specs (default config.yaml)")
    search.add_argument("--results", help="results folder (default: config's results)")
    search.add_argument("--dataset", help="dataset name (default: the only one in the config)")
    search.add_argument("--captioner", help="captioner name (default: the only one, or the only one built)")
    search.add_argument("--encoder", help="encoder name (default: the first in the config)")
    search.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    search.add_argument("--html", help="also write a self-contained HTML gallery of the results to this path")
    search.set_defaults(handler=_search)
    convert = commands.add_parser(
        "convert-clip", help="convert an open_clip ViT checkpoint (RemoteCLIP, GeoRSCLIP .pt) into a Hugging Face CLIP folder",
        description="Rename the weights of an open_clip ViT CLIP state dict into transformers' CLIPModel layout (pure torch, "
                    "no open_clip needed) and write it with the CLIP tokenizer and open_clip's preprocessing as a Hugging "
                    "Face folder, which baselines.clip.models.<name>.model then loads like any HF checkpoint.",
    )
    convert.add_argument("checkpoint", help="the open_clip checkpoint file, e.g. RemoteCLIP-ViT-B-32.pt or RS5M_ViT-B-32.pt")
    convert.add_argument("--out", required=True, help="folder to write (config.json, model.safetensors, tokenizer, processor)")
    convert.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                         help=f"CLIP tokenizer: hub id or local folder (default {DEFAULT_TOKENIZER}, which RemoteCLIP and "
                              "GeoRSCLIP ViT-B-32 share)")
    convert.add_argument("--activation", choices=["gelu", "quick_gelu"], default="gelu",
                         help="MLP activation of the checkpoint's open_clip config: gelu (ViT-B-32, RemoteCLIP, GeoRSCLIP; "
                              "default) or quick_gelu (-quickgelu configs, OpenAI's own weights)")
    convert.set_defaults(handler=_convert_clip)
    args = parser.parse_args(argv)
    # search prints results: keep library chatter (model and FAISS loading) to warnings
    logging.basicConfig(level=logging.WARNING if args.command == "search" else logging.INFO, format="%(levelname)s %(message)s")
    try:
        args.handler(args)
    except TrsllavaError as error:
        print(f"trsllava: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
