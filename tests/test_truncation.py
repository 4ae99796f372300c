"""Case C14: texts longer than the encoder's token limit. Two ~350-word joined texts identical up to
their last sentence (the only words that tell the pool from the tower): MiniLM reads the first 256
word pieces of each, so both embed identically and every text-to-image query ties the two images;
BM25 reads them whole. The recalls must be right given the cut, and every row must say how many
texts the encoder cut."""

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from trsllava import steps
from trsllava.captions.importer import import_captions
from trsllava.datasets import DatasetSpec, read_dataset
from trsllava.encoders import build_encoder
from trsllava.encoders.base import TokenCounts, load_token_counts
from trsllava.evaluation.caption_set_spec import CaptionSetFusionSpec
from trsllava.evaluation.evaluate import Extras, evaluate, evaluate_fusion
from trsllava.evaluation.fusion import FusionSpec
from trsllava.evaluation.protocol import Settings
from trsllava.evaluation.truncation import TRUNCATION_COLUMNS, fused_truncation

C14 = Path(__file__).parent / "data" / "cases" / "C14"
MINILM = {"type": "sentence-transformers", "model": "minilm", "device": "cpu"}
BM25 = {"type": "bm25"}


def c14_texts() -> list[str]:
    return [json.loads(line)["text"] for line in (C14 / "captions_joined.jsonl").read_text().splitlines()]


def test_minilm_token_counts_match_the_model_without_loading_it():
    encoder = build_encoder("minilm", MINILM)
    references = ["a large blue swimming pool among houses .", "suburban houses and a water tower ."]
    counts = encoder.token_counts(c14_texts() + references)
    assert encoder._model is None  # the tokenizer only: a merge job never loads the weights
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(encoder.resolved.source, device="cpu")
    assert counts.limit == model.max_seq_length == 256
    # the model's own tokenizer, special tokens included ([CLS] ... [SEP]), no truncation
    expected = [len(model.tokenizer(text, truncation=False)["input_ids"]) for text in c14_texts() + references]
    assert counts.lengths.dtype == np.int32 and counts.lengths.tolist() == expected
    assert counts.lengths[0] > 256 and counts.lengths[1] > 256 and counts.over() == 2
    # and the model does cut them: its input holds 256 tokens, the same for both texts
    features = model.tokenize(c14_texts())
    assert tuple(features["input_ids"].shape) == (2, 256)
    assert np.array_equal(features["input_ids"][0].numpy(), features["input_ids"][1].numpy())
    assert counts.over(np.array([2, 3])) == 0


def test_bm25_has_no_limit():
    counts = build_encoder("bm25", BM25).token_counts(c14_texts())
    assert counts == TokenCounts() and counts.over() is None
    assert counts.metadata(2) == {"token_limit": None, "truncated": None, "texts": 2}


def test_encoder_fusion_takes_the_largest_count_of_the_encoders_with_a_limit():
    fused = fused_truncation([
        {"a": {"truncated_texts": None, "truncated_references": None}},
        {"a": {"truncated_texts": 2, "truncated_references": 0}},
        {"a": {"truncated_texts": 5, "truncated_references": None}},
    ])
    assert fused == {"a": {"truncated_texts": 5, "truncated_references": 0}}
    assert fused_truncation([{"a": dict.fromkeys(TRUNCATION_COLUMNS)}]) == {"a": dict.fromkeys(TRUNCATION_COLUMNS)}


@pytest.fixture(scope="module")
def c14(tmp_path_factory):
    """C14's inputs as the workflow writes them, the caption set also under a second prompt
    ("copy"), and each encoder's representations built by the embedding step."""
    root = tmp_path_factory.mktemp("c14")
    images, references, _ = read_dataset(DatasetSpec.from_config("c14", {"format": "karpathy",
                                                                         "annotations": str(C14 / "dataset_c14.json")}))
    captions, _ = import_captions(C14 / "captions_joined.jsonl", "c14", images)
    captions = pl.concat([captions, captions.with_columns(pl.lit("copy").alias("prompt"))])
    paths = {"images": root / "images.parquet", "references": root / "references.parquet", "captions": root / "captions.parquet"}
    images.write_parquet(paths["images"])
    references.write_parquet(paths["references"])
    captions.write_parquet(paths["captions"])
    config = {"results": str(root / "results"), "encoders": {"minilm": MINILM, "bm25": BM25}}
    for name in config["encoders"]:
        for table in ("references", "captions"):
            steps.embed_texts(config, name, paths[table], root / name / table)
    return root, config, paths


def test_representations_keep_token_lengths_and_counts(c14, caplog):
    root, config, paths = c14
    metadata = json.loads((root / "minilm" / "captions" / "encoder.json").read_text())
    assert (metadata["token_limit"], metadata["truncated"], metadata["texts"]) == (256, 2, 2)
    lengths = np.load(root / "minilm" / "captions" / "tokens.npy")
    assert lengths.dtype == np.int32 and lengths.shape == (2,) and (lengths > 256).all()
    references = json.loads((root / "minilm" / "references" / "encoder.json").read_text())
    assert (references["token_limit"], references["truncated"], references["texts"]) == (256, 0, 10)
    bm25 = json.loads((root / "bm25" / "captions" / "encoder.json").read_text())
    assert (bm25["token_limit"], bm25["truncated"], bm25["texts"]) == (None, None, 2)
    assert load_token_counts(root / "bm25" / "captions") == TokenCounts()
    with caplog.at_level(logging.INFO):  # a rerun says it again, in one line
        steps.embed_texts(config, "minilm", paths["captions"], root / "minilm" / "captions")
    assert f"encoder minilm: 2 of 2 texts of {paths['captions']} exceed its 256-token limit and are cut to it" in caplog.text


def run(c14, encoder, extras=Extras()):
    root, config, paths = c14
    out = root / "out"
    out.mkdir(exist_ok=True)
    common = dict(dataset="c14", split="test", captioner="c14", images_path=paths["images"], references_path=paths["references"],
                  captions_path=paths["captions"], settings=Settings(aggregations=("max",), progress=False), extras=extras,
                  metrics_out=out / f"{encoder}.metrics.parquet", ranks_out=out / f"{encoder}.ranks.parquet")
    if "+" in encoder:
        names = encoder.split("+")
        metrics = evaluate_fusion(spec=FusionSpec(encoder, tuple(names), (0.5, 0.5), 60.0, "rrf"),
                                  encoder_entries=config["encoders"], reference_rep_dirs=[root / n / "references" for n in names],
                                  generated_rep_dirs=[root / n / "captions" for n in names], **common)
    else:
        metrics = evaluate(encoder_name=encoder, encoder_entry=config["encoders"][encoder],
                           reference_rep_dir=root / encoder / "references", generated_rep_dir=root / encoder / "captions", **common)
    assert metrics.equals(pl.read_parquet(out / f"{encoder}.metrics.parquet"))
    return {row["prompt"]: row for row in metrics.iter_rows(named=True)}


def test_c14_minilm_ties_the_cut_texts_by_hand(c14):
    """Both texts reach MiniLM as the same 256 tokens: for each of the 10 human captions the two
    images score the same, so the relevant one is first in half of the orders: R@1 = 1/2 (50.00),
    optimistic 100, pessimistic 0; with two images R@5 = R@10 = 100."""
    row = run(c14, "minilm")["rsrt"]
    assert row["n_t2i_queries"] == 10 and row["n_gallery_images"] == 2
    assert row["t2i_r1"] == pytest.approx(50.0) and row["t2i_r1_optimistic"] == 100.0 and row["t2i_r1_pessimistic"] == 0.0
    assert row["t2i_r5"] == 100.0
    assert (row["truncated_texts"], row["truncated_references"]) == (2, 0)


def test_c14_bm25_reads_the_last_sentence_by_hand(c14):
    """BM25 sees each text whole: the last sentence names the pool or the tower, and every query
    names one of them ("pool" in the five pool captions, "tower" in the five tower captions), while
    the 330 shared words score both images alike: R@1 = 100 with no tie."""
    row = run(c14, "bm25")["rsrt"]
    assert row["t2i_r1"] == 100.0 and row["t2i_r1_pessimistic"] == 100.0
    assert row["truncated_texts"] is None and row["truncated_references"] is None


def test_c14_counts_of_caption_set_and_encoder_fusions(c14):
    """``fused`` (the union of the prompts rsrt and copy) holds the same 2 distinct texts; a weighted
    caption-set fusion counts each member's (2 + 2); an encoder fusion takes MiniLM's, BM25 having
    no limit."""
    extras = Extras(caption_set_fusions=(CaptionSetFusionSpec("both", ("rsrt", "copy"), (0.5, 0.5)),))
    rows = run(c14, "minilm", extras)
    assert {label: rows[label]["truncated_texts"] for label in rows} == {"copy": 2, "rsrt": 2, "fused": 2, "both": 4}
    assert {rows[label]["truncated_references"] for label in rows} == {0}
    fused = run(c14, "minilm+bm25", extras)
    assert {label: (fused[label]["truncated_texts"], fused[label]["truncated_references"]) for label in fused} == {
        "copy": (2, 0), "rsrt": (2, 0), "fused": (2, 0), "both": (4, 0)}
    assert all(row["truncated_texts"] is None for row in run(c14, "bm25", extras).values())


def test_c14_counts_reach_the_ablation_csv_not_the_markdown(c14, tmp_path):
    from trsllava.evaluation.evaluate import summarize
    from trsllava.reporting.tables import gather_ablation, write_ablation

    root = c14[0]
    run(c14, "minilm")
    run(c14, "bm25")
    # a baseline row (CLIP, the oracle) goes through summarize without counts: null, never 0
    stats = pl.read_parquet(root / "out" / "bm25.ranks.parquet").select("direction", "caption_set", "aggregation", "query",
                                                                       "above", "tied_other", "tied_relevant")
    _, baseline = summarize(stats, dataset="c14", captioner="clip:x", encoder="clip", n_images=2, kind="baseline")
    assert baseline["truncated_texts"].dtype == pl.Int64 and baseline["truncated_texts"].null_count() == baseline.height
    baseline.write_parquet(tmp_path / "baseline.parquet")
    paths = write_ablation(gather_ablation([root / "out" / "minilm.metrics.parquet", root / "out" / "bm25.metrics.parquet",
                                            tmp_path / "baseline.parquet"]), tmp_path)
    table = pl.read_csv(paths["csv"]).filter(pl.col("prompt") == "rsrt")
    counts = {(row["encoder"], row["prompt"]): (row["truncated_texts"], row["truncated_references"]) for row in table.iter_rows(named=True)}
    assert counts == {("minilm", "rsrt"): (2, 0), ("bm25", "rsrt"): (None, None), ("clip", "rsrt"): (None, None)}
    assert "truncated" not in paths["md"].read_text() and "truncated" not in paths["tex"].read_text()
