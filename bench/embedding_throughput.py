"""Text-embedding throughput of MiniLM (all-MiniLM-L6-v2) on RSICD's test captions.

(a) encode every caption vs encode the unique captions once and map back (what the package's
    representations do: one vector per unique text), texts/s per *input* text, and a check that the
    mapped-back vectors equal the full encoding;
(b) the sentence-transformers torch backend vs an ONNX Runtime backend on the same unique texts:
    texts/s, agreement of the vectors, and the mR each gives on the built-in sample with its real
    caption set (claude-sample), evaluated through the package (Protocol, max aggregation).

Run: python bench/embedding_throughput.py [--repeats 2] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import _common  # first: sets HF_HUB_OFFLINE before transformers is imported
import numpy as np
import polars as pl

from trsllava.captions.importer import import_captions
from trsllava.datasets.load import BUILTIN_SAMPLE_DIR, DatasetSpec, load_dataset
from trsllava.encoders.dense import DenseRepresentation, SentenceTransformerEncoder
from trsllava.encoders.weights import resolve_model, sha256_of
from trsllava.evaluation.caption_sets import caption_set_views
from trsllava.evaluation.metrics import recalls, with_ranks
from trsllava.evaluation.protocol import Protocol, Settings

NAME = "embedding_throughput"
SAMPLE_CAPTIONS = BUILTIN_SAMPLE_DIR / "captions" / "claude-sample.jsonl"
ONNX_DIR = _common.CACHE_DIR / "onnx" / "all-MiniLM-L6-v2"


# -- ONNX backend ---------------------------------------------------------------------------------
class OnnxSentenceEncoder:
    """MiniLM as sentence-transformers runs it (length-sorted batches, mean pooling over the attention
    mask, L2 normalisation), with the transformer itself executed by ONNX Runtime.

    Used when optimum (sentence-transformers' own ``backend="onnx"``) is not installable: the model is
    exported with ``torch.onnx.export`` from the same local weights; the graph is the one optimum
    would export (BertModel -> last_hidden_state); pooling and normalisation are done in numpy."""

    def __init__(
        self, st_model, model_path: str, directory: Path, batch_size: int, threads: int
    ):
        import onnxruntime as ort

        self.tokenizer = st_model.tokenizer
        self.max_length = int(st_model.max_seq_length)
        self.batch_size = batch_size
        self.path = directory / "model.onnx"
        meta = {
            "weights_sha256": sha256_of(Path(model_path) / "model.safetensors"),
            "exporter": "torch.onnx.export",
        }
        meta_path = directory / "export.json"
        self.exported_now = False
        self.export_s = 0.0
        if not (
            self.path.is_file()
            and meta_path.is_file()
            and json.loads(meta_path.read_text()) == meta
        ):
            start = time.perf_counter()
            self._export(model_path, directory)
            meta_path.write_text(json.dumps(meta))
            self.export_s = time.perf_counter() - start
            self.exported_now = True
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = (
            threads  # as many as torch uses, for a like-for-like comparison
        )
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.description = f"onnxruntime {ort.__version__} (CPUExecutionProvider) on {self.path}, exported by torch.onnx.export"

    def _export(self, model_path: str, directory: Path) -> None:
        import torch
        from transformers import AutoModel

        directory.mkdir(parents=True, exist_ok=True)
        model = AutoModel.from_pretrained(model_path).eval()

        class LastHidden(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.inner(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                ).last_hidden_state

        example = self.tokenizer(
            ["an example sentence", "a second, longer example sentence"],
            padding=True,
            return_tensors="pt",
        )
        names = ["input_ids", "attention_mask", "token_type_ids"]
        scratch = directory / "model.onnx.partial"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHidden(model),
                tuple(example[n] for n in names),
                str(scratch),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={
                    n: {0: "batch", 1: "sequence"}
                    for n in names + ["last_hidden_state"]
                },
                opset_version=17,
                dynamo=False,
            )
        os.replace(scratch, self.path)

    def encode(self, texts: list[str]) -> np.ndarray:
        order = np.argsort(
            [-len(t) for t in texts], kind="stable"
        )  # as sentence-transformers batches
        out = np.empty((len(texts), 0), dtype=np.float32)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = [texts[i] for i in order[start : start + self.batch_size]]
            encoded = self.tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            feed = {
                k: np.asarray(v, dtype=np.int64)
                for k, v in encoded.items()
                if k in self.inputs
            }
            hidden = self.session.run(None, feed)[0]
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            pooled /= np.clip(
                np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None
            )
            chunks.append(pooled.astype(np.float32))
        if chunks:
            out = np.concatenate(chunks)
        result = np.empty_like(out)
        result[order] = out
        return np.ascontiguousarray(result)


class OptimumOnnxEncoder:
    """sentence-transformers' own ONNX backend (needs optimum[onnxruntime])."""

    def __init__(self, model_path: str, directory: Path, batch_size: int):
        from sentence_transformers import SentenceTransformer

        self.batch_size = batch_size
        self.exported_now = False
        self.export_s = 0.0
        target = directory / "optimum"
        if not (target / "onnx" / "model.onnx").is_file():
            start = time.perf_counter()
            model = SentenceTransformer(
                model_path, device="cpu", backend="onnx"
            )  # exports from the local folder
            model.save_pretrained(str(target))
            self.export_s = time.perf_counter() - start
            self.exported_now = True
        self.model = SentenceTransformer(str(target), device="cpu", backend="onnx")
        self.description = f"sentence-transformers backend='onnx' (optimum) on {target}"

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def onnx_encoder(
    st_model, model_path: str, batch_size: int, force_manual: bool, threads: int
):
    if not force_manual:
        try:
            import optimum.onnxruntime  # noqa: F401

            return OptimumOnnxEncoder(model_path, ONNX_DIR, batch_size), "optimum"
        except ImportError as exc:
            print(
                f"[onnx] optimum not importable ({exc}); exporting with torch.onnx.export instead"
            )
    return OnnxSentenceEncoder(
        st_model, model_path, ONNX_DIR / "torch-export", batch_size, threads
    ), "torch.onnx.export"


# -- helpers ----------------------------------------------------------------------------------------
def sample_mr(
    images,
    references,
    captions,
    reference_vectors,
    caption_vectors,
    ref_texts,
    cap_texts,
) -> dict:
    protocol = Protocol(
        images,
        references,
        "test",
        DenseRepresentation(ref_texts, reference_vectors),
        DenseRepresentation(cap_texts, caption_vectors),
        Settings(aggregations=("max",), progress=False),
    )
    views = [protocol.view(label, rows) for label, rows in caption_set_views(captions)]
    stats = with_ranks(
        pl.concat([protocol.text_to_image(views), protocol.image_to_text(views)])
    )
    out = {}
    for (label, aggregation), part in stats.group_by(
        ["caption_set", "aggregation"], maintain_order=True
    ):
        out[f"{label}|{aggregation}"] = recalls(part)
    return out, stats


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        default=_common.RSICD_JSON,
        help="RSICD Karpathy JSON",
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed rounds (interleaved); the best run of each is reported",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=420,
        help="start no further round past this many seconds",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for torch and ONNX Runtime (default: torch's)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="use only the first N captions (quick check)",
    )
    parser.add_argument(
        "--captions",
        type=Path,
        default=SAMPLE_CAPTIONS,
        help="the sample's real caption set",
    )
    parser.add_argument(
        "--manual-onnx",
        action="store_true",
        help="skip optimum even when it is installed",
    )
    parser.add_argument(
        "--out", type=Path, default=_common.RESULTS_DIR / f"{NAME}.json"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import torch

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {load_before[0]:.2f}"
    )

    # -- data ----------------------------------------------------------------------------------
    images, references = load_dataset(
        _common.rsicd_spec("split", args.annotations, args.split)
    )
    texts = references["text"].to_list()
    if args.limit:
        texts = texts[: args.limit]
    uniq, _ = _common.unique_texts(texts)
    print(
        f"RSICD {args.split}: {images.height} images, {len(texts)} captions, {len(uniq)} distinct "
        f"({len(texts) / len(uniq):.2f} captions per distinct text)"
    )

    # -- torch model ---------------------------------------------------------------------------
    entry = {**_common.MINILM_ENTRY, "batch_size": args.batch_size}
    encoder = SentenceTransformerEncoder("minilm", entry)
    model_path = resolve_model("minilm")
    st_model = encoder.load_model()

    def encode_torch(items):
        return encoder.encode(st_model, items, progress=False)

    encode_torch(uniq[:128])  # warm-up

    # -- timed rounds: (a) every text vs unique texts then map back, (b) torch vs ONNX on unique
    def unique_then_map(items):
        distinct, positions = _common.unique_texts(items)
        return encode_torch(distinct)[positions]

    onnx, onnx_kind = onnx_encoder(
        st_model, model_path, args.batch_size, args.manual_onnx, threads
    )
    if onnx.exported_now:
        print(f"[onnx] exported in {onnx.export_s:.1f} s -> {ONNX_DIR}")
    onnx.encode(uniq[:128])  # warm-up
    jobs = {
        "every_text": (encode_torch, texts),
        "unique_then_map": (unique_then_map, texts),
        "torch_unique": (encode_torch, uniq),
        "onnx_unique": (onnx.encode, uniq),
    }
    runs = {name: [] for name in jobs}  # (wall s, cpu s / wall s) per run
    outputs = {}
    started = time.perf_counter()
    for round_ in range(args.repeats):
        round_start = time.perf_counter()
        for name, (
            function,
            items,
        ) in jobs.items():  # interleaved, so load from other jobs hits all alike
            wall, cpu = time.perf_counter(), time.process_time()
            outputs[name] = function(items)
            wall = time.perf_counter() - wall
            runs[name].append((wall, (time.process_time() - cpu) / wall))
        round_s = time.perf_counter() - round_start
        print(
            f"round {round_ + 1}: "
            + ", ".join(f"{n} {runs[n][-1][0]:.1f} s" for n in jobs)
            + f" (load average {os.getloadavg()[0]:.2f})"
        )
        if (
            time.perf_counter() - started + round_s > args.max_seconds
            and round_ + 1 < args.repeats
        ):
            print(
                f"stopping after {round_ + 1} round(s): another would pass --max-seconds {args.max_seconds}"
            )
            break
    best = {name: min(w for w, _ in values) for name, values in runs.items()}
    cores = {
        name: min(values)[1] for name, values in runs.items()
    }  # cpu/wall of the best run
    full, mapped = outputs["every_text"], outputs["unique_then_map"]
    torch_u, onnx_u = outputs["torch_unique"], outputs["onnx_unique"]
    t_full, t_unique, t_torch, t_onnx = (
        best["every_text"],
        best["unique_then_map"],
        best["torch_unique"],
        best["onnx_unique"],
    )
    diff_a = float(np.abs(mapped - full).max())
    close_a = bool(np.allclose(mapped, full, rtol=1e-4, atol=1e-5))
    exact_a = int(np.sum(np.all(mapped == full, axis=1)))
    part_a = {
        "n_texts": len(texts),
        "n_unique": len(uniq),
        "every_text_s": t_full,
        "unique_then_map_s": t_unique,
        "every_text_runs": runs["every_text"],
        "unique_then_map_runs": runs["unique_then_map"],
        "every_text_texts_per_s": len(texts) / t_full,
        "unique_then_map_texts_per_s": len(texts) / t_unique,
        "speedup": t_full / t_unique,
        "max_abs_diff": diff_a,
        "allclose_rtol1e-4_atol1e-5": close_a,
        "rows_bitwise_equal": exact_a,
    }
    if not close_a:
        print(
            f"WARNING: mapped-back embeddings differ from the full encoding (max abs diff {diff_a:.2e})"
        )
    all_torch, all_onnx = runs["torch_unique"], runs["onnx_unique"]
    diff_b = float(np.abs(onnx_u - torch_u).max())
    cos_b = float(np.min(np.sum(onnx_u * torch_u, axis=1)))

    # mR on the built-in sample with its real caption set, through the package
    sample_spec = DatasetSpec.from_config("sample", {"format": "builtin"})
    s_images, s_refs = load_dataset(sample_spec)
    if not args.captions.is_file():
        raise SystemExit(f"caption set not found: {args.captions}")
    s_caps, coverage = import_captions(args.captions, "claude-sample", s_images)
    ref_texts, _ = _common.unique_texts(s_refs["text"].to_list())
    cap_texts, _ = _common.unique_texts(s_caps["text"].to_list())
    sample = {
        "caption_rows": s_caps.height,
        "captioned_images": coverage["captioned_images"],
        "gallery_images": coverage["gallery_images"],
        "reference_texts": len(ref_texts),
        "caption_texts": len(cap_texts),
    }
    metrics, stats = {}, {}
    for backend, encode in (("torch", encode_torch), ("onnx", onnx.encode)):
        start = time.perf_counter()
        ref_vectors, cap_vectors = encode(ref_texts), encode(cap_texts)
        sample[f"{backend}_encode_s"] = time.perf_counter() - start
        metrics[backend], stats[backend] = sample_mr(
            s_images, s_refs, s_caps, ref_vectors, cap_vectors, ref_texts, cap_texts
        )
    keys = ["direction", "caption_set", "aggregation", "query"]
    joined = stats["torch"].join(stats["onnx"], on=keys, suffix="_onnx")
    same_counts = int(
        joined.filter(
            (pl.col("above") == pl.col("above_onnx"))
            & (pl.col("tied_other") == pl.col("tied_other_onnx"))
            & (pl.col("tied_relevant") == pl.col("tied_relevant_onnx"))
        ).height
    )
    sample["queries_compared"] = stats["torch"].height
    sample["queries_with_identical_tie_counts"] = same_counts
    part_b = {
        "onnx_backend": onnx_kind,
        "onnx_description": onnx.description,
        "n_unique": len(uniq),
        "torch_s": t_torch,
        "onnx_s": t_onnx,
        "torch_runs": all_torch,
        "onnx_runs": all_onnx,
        "torch_texts_per_s": len(uniq) / t_torch,
        "onnx_texts_per_s": len(uniq) / t_onnx,
        "onnx_speedup": t_torch / t_onnx,
        "max_abs_diff": diff_b,
        "min_cosine": cos_b,
        "sample": sample,
        "sample_metrics": metrics,
    }

    # -- report --------------------------------------------------------------------------------
    print()
    print(
        f"(a) MiniLM (torch, batch {args.batch_size}) on RSICD {args.split} captions: every text vs unique texts mapped back"
    )
    print(
        _common.table(
            ["strategy", "encoded", "wall s", "input texts/s", "cpu/wall"],
            [
                [
                    "every text",
                    len(texts),
                    f"{t_full:.1f}",
                    f"{len(texts) / t_full:.0f}",
                    f"{cores['every_text']:.2f}",
                ],
                [
                    "unique + map back",
                    len(uniq),
                    f"{t_unique:.1f}",
                    f"{len(texts) / t_unique:.0f}",
                    f"{cores['unique_then_map']:.2f}",
                ],
            ],
        )
    )
    print(
        f"speed-up of unique + map back: x{t_full / t_unique:.2f}   "
        f"(mapped == full: allclose {close_a}, max |diff| {diff_a:.1e}, {exact_a}/{len(texts)} rows bit-identical)"
    )
    print()
    print(f"(b) torch vs ONNX ({onnx_kind}) on the {len(uniq)} unique texts")
    print(
        _common.table(
            ["backend", "wall s", "texts/s", "cpu/wall"],
            [
                [
                    "torch",
                    f"{t_torch:.1f}",
                    f"{len(uniq) / t_torch:.0f}",
                    f"{cores['torch_unique']:.2f}",
                ],
                [
                    "onnx",
                    f"{t_onnx:.1f}",
                    f"{len(uniq) / t_onnx:.0f}",
                    f"{cores['onnx_unique']:.2f}",
                ],
            ],
        )
    )
    print(
        f"ONNX / torch throughput: x{t_torch / t_onnx:.2f}   vectors: max |diff| {diff_b:.1e}, min cosine {cos_b:.6f}"
    )
    print()
    print(
        f"mR on the built-in sample ({s_images.height} images) with its real caption set {args.captions.name} "
        f"({s_caps.height} rows), max aggregation:"
    )
    rows = []
    for key in metrics["torch"]:
        label = key.split("|")[0]
        mt, mo = metrics["torch"][key]["mR"], metrics["onnx"][key]["mR"]
        rows.append([label, f"{mt:.3f}", f"{mo:.3f}", f"{mo - mt:+.4f}"])
    print(_common.table(["caption set", "mR torch", "mR onnx", "onnx - torch"], rows))
    print(
        f"per-query tie counts identical for {same_counts} of {stats['torch'].height} (query, caption set) pairs"
    )
    for label in ("rsrt", "fused"):
        key = f"{label}|max"
        if key in metrics["torch"]:
            part_b[f"mR_{label}_torch"] = metrics["torch"][key]["mR"]
            part_b[f"mR_{label}_onnx"] = metrics["onnx"][key]["mR"]
            part_b[f"mR_{label}_diff"] = (
                metrics["onnx"][key]["mR"] - metrics["torch"][key]["mR"]
            )
    load_after = os.getloadavg()
    print(
        f"best of {len(runs['every_text'])} interleaved round(s); cpu/wall = process CPU seconds per wall second "
        f"(about {torch.get_num_threads()} when the cores were free)"
    )
    print(
        f"\nload average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} (other jobs on the machine skew timings)"
    )
    path = _common.write_results(
        NAME,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "torch_threads": torch.get_num_threads(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "a_unique_vs_every": part_a,
            "b_torch_vs_onnx": part_b,
        },
        args.out,
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
