"""Query and document prompts (asymmetric encoders): config forms, the prompt reaching the model on
the right side, both retrieval directions scoring query-role against document-role vectors, and a
symmetric encoder unchanged. A tiny random sentence-transformers model built from a config (with
MiniLM's tokenizer) stands in for E5-like models; no weights are downloaded."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from trsllava.encoders import build_encoder
from trsllava.encoders.dense import DenseRepresentation, SentenceTransformerEncoder
from trsllava.encoders.prompts import role_prompts
from trsllava.encoders.store import ROLE_FILES, VECTORS_FILE
from trsllava.encoders.weights import resolve_identity
from trsllava.errors import TrsllavaError
from trsllava.evaluation.caption_sets import caption_set_views
from trsllava.evaluation.protocol import Protocol, Settings

E5_PROMPTS = {"query": "query: ", "passage": "passage: "}  # E5's config_sentence_transformers.json names


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random BERT sentence-transformers folder (mean pooling, normalised) whose
    config_sentence_transformers.json configures E5-style prompts."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    try:  # sentence-transformers 6
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # 5
        from sentence_transformers.models import Normalize, Pooling, Transformer

    root = tmp_path_factory.mktemp("tiny-st")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_identity("minilm").source)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    model = SentenceTransformer(modules=[Transformer(str(root / "bert"), max_seq_length=64), Pooling(32, "mean"), Normalize()],
                                device="cpu")
    model.save(str(root / "model"))
    # E5's own file names only query and passage (sentence-transformers 6 would add an empty "document")
    path = root / "model" / "config_sentence_transformers.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prompts": E5_PROMPTS, "default_prompt_name": None}))
    return root / "model"


class RecordingEncoder(SentenceTransformerEncoder):
    """Records the prompt each ``encode`` call passes to the model, with the texts."""

    def __init__(self, name, entry):
        super().__init__(name, entry)
        self.calls = []

    def encode(self, model, texts, progress=True, prompt=None):
        self.calls.append((prompt, list(texts)))
        return super().encode(model, texts, progress, prompt)


def entry(model, **extra):
    return {"type": "sentence-transformers", "model": str(model), "device": "cpu", **extra}


# ------------------------------------------------------------------------------------ config forms

@pytest.mark.parametrize("config, expected", [
    ({}, {"query": None, "document": None}),
    ({"query_prompt": "query: ", "document_prompt": "passage: "}, {"query": "query: ", "document": "passage: "}),
    ({"query_prompt": "Represent this sentence for searching relevant passages: "},  # BGE: queries only
     {"query": "Represent this sentence for searching relevant passages: ", "document": None}),
    ({"prompts": {"query": "search_query: ", "document": "search_document: "}},
     {"query": "search_query: ", "document": "search_document: "}),
    ({"prompts": {"query": "Instruct: find\nQuery:", "document": ""}}, {"query": "Instruct: find\nQuery:", "document": None}),
    ({"prompts": "model"}, {"query": "query: ", "document": "passage: "}),  # "passage" as encode_document picks it
])
def test_role_prompts_config_forms(config, expected):
    assert role_prompts("e", config, lambda: dict(E5_PROMPTS)) == expected


@pytest.mark.parametrize("config, complaint", [
    ({"prompts": {"query": "q"}, "document_prompt": "d"}, "either prompts or query_prompt"),
    ({"prompts": {"queries": "q"}}, r"unknown role\(s\) \['queries'\]"),
    ({"prompts": "yes"}, "expected 'model' or a mapping"),
    ({"query_prompt": 3}, "the query prompt is 3"),
])
def test_role_prompts_errors_name_the_key(config, complaint):
    with pytest.raises(TrsllavaError, match=complaint):
        role_prompts("e", config, dict)


def test_model_prompts_of_a_model_without_any_is_an_error():
    encoder = build_encoder("minilm", entry("minilm", prompts="model"))
    with pytest.raises(TrsllavaError, match=r"encoders\.minilm\.prompts is 'model' but .* configures no prompts"):
        encoder.fingerprint("query")


# ------------------------------------------------------------------------- the prompt reaches the model

def test_model_prompts_are_the_configured_ones(tiny_model):
    from sentence_transformers import SentenceTransformer

    texts = ["many planes at an airport", "a river through farmland"]
    encoder = build_encoder("e5ish", entry(tiny_model, prompts="model"))
    assert encoder.fingerprint("query")["prompt"] == "query: " and encoder.fingerprint("document")["prompt"] == "passage: "
    assert not encoder.symmetric
    model = SentenceTransformer(str(tiny_model), device="cpu")
    np.testing.assert_allclose(encoder.embed(texts, "query"), model.encode_query(texts, normalize_embeddings=True), atol=1e-6)
    # the file's "passage": sentence-transformers 6 adds an empty "document" prompt to every loaded
    # model, which its encode_document then prefers (E5 would get no document prompt there)
    np.testing.assert_allclose(encoder.embed(texts, "document"), model.encode(texts, prompt_name="passage", normalize_embeddings=True),
                               atol=1e-6)
    assert np.abs(encoder.embed(texts, "query") - encoder.embed(texts, "document")).max() > 1e-3


def test_explicit_prompts_are_prepended_on_their_side_only(tiny_model):
    from sentence_transformers import SentenceTransformer

    texts = ["a stadium beside a road", "white ships in a harbour"]
    encoder = RecordingEncoder("bge", entry(tiny_model, query_prompt="Represent this: "))
    query, document = encoder.embed(texts, "query"), encoder.embed(texts, "document")
    assert encoder.calls == [("Represent this: ", texts), (None, texts)]
    plain = SentenceTransformer(str(tiny_model), device="cpu")
    np.testing.assert_allclose(query, plain.encode(["Represent this: " + t for t in texts], normalize_embeddings=True), atol=1e-6)
    # no prompt given, so none applied: not even the model's configured ones
    np.testing.assert_allclose(document, plain.encode(texts, normalize_embeddings=True, prompt=""), atol=1e-6)


# ---------------------------------------------------------------- both directions use the right roles

IMAGES = pl.DataFrame({"image_id": ["A", "B", "C"], "filename": ["A", "B", "C"], "split": "test", "path": None},
                      schema={"image_id": pl.String, "filename": pl.String, "split": pl.String, "path": pl.String})
REFERENCES = pl.DataFrame({"caption_id": [0, 1, 2], "image_id": ["A", "B", "C"],
                           "text": ["planes parked at an airport", "a bridge over a wide river", "a green golf course"]})
CAPTIONS = pl.DataFrame(
    {"image_id": ["A", "B", "C"], "prompt": "p", "variant": None, "field": None,
     "text": ["an airport apron with aircraft", "a long bridge crossing water", "fairways and sand bunkers"]},
    schema_overrides={"variant": pl.Int64, "field": pl.String},
)


def test_both_directions_score_query_role_against_document_role(tiny_model, tmp_path):
    encoder = RecordingEncoder("e5ish", entry(tiny_model, query_prompt="query: ", document_prompt="passage: "))
    for table, texts in (("references", REFERENCES["text"].to_list()), ("captions", CAPTIONS["text"].to_list())):
        encoder.represent(texts, tmp_path / table, cache_root=tmp_path / "cache")
        assert sorted(p for p, _ in encoder.calls[-2:]) == ["passage: ", "query: "]  # each table in both roles
        assert not (tmp_path / table / VECTORS_FILE).exists()
        assert all((tmp_path / table / name).is_file() for name in ROLE_FILES.values())
    refs, gens = DenseRepresentation.load(tmp_path / "references"), DenseRepresentation.load(tmp_path / "captions")
    q = {role: encoder.embed(REFERENCES["text"].to_list(), role) for role in ("query", "document")}
    g = {role: encoder.embed(CAPTIONS["text"].to_list(), role) for role in ("query", "document")}

    protocol = Protocol(IMAGES, REFERENCES, "test", refs, gens, Settings(aggregations=("max",), progress=False))
    views = [protocol.view(label, rows) for label, rows in caption_set_views(CAPTIONS)]
    [(_, _, t2i)] = list(protocol.t2i_scores(np.arange(3), views))  # human captions x images
    [(_, _, i2t)] = list(protocol.i2t_scores(np.arange(3), views))  # images x human captions
    # text-to-image: the human caption is the query, the generated text the document
    np.testing.assert_allclose(t2i, q["query"] @ g["document"].T, atol=1e-5)
    # image-to-text: the generated text is the query, the human caption the document
    np.testing.assert_allclose(i2t, g["query"] @ q["document"].T, atol=1e-5)
    # the check can fail: with the roles swapped the scores differ
    assert np.abs(t2i - q["document"] @ g["query"].T).max() > 1e-3
    assert np.abs(i2t - g["document"] @ q["query"].T).max() > 1e-3


# ------------------------------------------------------------------------ a symmetric encoder unchanged

def test_symmetric_encoder_unchanged(tmp_path):
    plain = build_encoder("minilm", entry("minilm"))
    # the fingerprint of before prompts existed (so existing caches stay valid), one matrix
    assert plain.fingerprint("query") == plain.fingerprint("document") == {
        "type": "sentence-transformers", "model": "sentence-transformers/all-MiniLM-L6-v2",
        "weights": "sha256:53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", "backend": "torch",
        "dimensions": None, "normalized": True, "prompt": None, "model_kwargs": {}}
    empty = build_encoder("minilm", entry("minilm", prompts={"query": "", "document": None}))
    assert empty.fingerprint("query") == plain.fingerprint("query") and empty.symmetric
    texts = ["a plane", "a harbour"]
    plain.represent(texts, tmp_path / "rep", cache_root=tmp_path / "cache")
    assert (tmp_path / "rep" / VECTORS_FILE).is_file() and not (tmp_path / "rep" / ROLE_FILES["query"]).exists()
    rep = DenseRepresentation.load(tmp_path / "rep")
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(resolve_identity("minilm").source, device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(np.asarray(rep.vectors), expected, atol=1e-6)
