"""Score a built archive against a text query (text-to-image) or an image (image-to-text).

Text-to-image: the query is embedded with the run's encoder and compared with every database text
of the chosen caption set; an image scores as its best-matching text (``max``, the paper's rule) or
as the mean over its texts (``mean``). Dense encoders with ``max`` search the run's FAISS index,
widening the search until K distinct images are found; ``mean`` and BM25 score every text exactly
(BM25 with its own bm25s index, as in the evaluation).

Image-to-text: an image of the gallery is represented by texts already embedded by the run, never
by pixels. ``captions="human"`` ranks the dataset's human captions with the image's generated captions
as queries (the benchmark's image-to-text direction); ``captions="generated"`` ranks the generated
captions of the whole gallery with the image's human captions as queries. A candidate caption scores
as the max (or mean) of its similarity to the query texts; identical caption texts are one result
listing every image that has it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np
import polars as pl

from ..encoders.dense import DenseRepresentation
from ..encoders.lexical import BM25Representation
from ..errors import TrsllavaError
from ..evaluation.caption_sets import FUSED, caption_set_views
from .archive import Archive

AGGREGATIONS = ("max", "mean")
CAPTION_SOURCES = ("human", "generated")


@dataclass
class Hit:
    rank: int
    score: float
    image_id: str  # the image (text-to-image) or the first image holding the caption (image-to-text)
    text: str  # the matched caption (text-to-image: the image's best-matching text)
    prompt: str | None = None  # caption set coordinates of a generated text; None for human captions
    field: str | None = None
    path: str | None = None  # the image file, when the dataset has images
    image_ids: list[str] = dataclass_field(default_factory=list)  # every image holding this exact text
    matched_query: str | None = None  # image-to-text: the query text that matched best
    same_image: bool | None = None  # image-to-text: the caption belongs to the query image


@dataclass
class SearchResult:
    mode: str  # text | image
    query: str  # the query text, or the image id
    query_texts: list[str]
    dataset: str
    captioner: str
    encoder: str
    aggregation: str
    caption_set: str
    target: str  # images | human captions | generated captions
    hits: list[Hit]
    query_path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise TrsllavaError(f"aggregation '{aggregation}' is not one of {list(AGGREGATIONS)}")


def caption_rows(archive: Archive, caption_set: str | None) -> tuple[str, pl.DataFrame]:
    """The caption table rows of a caption set (default: every text of the captioner)."""
    captions = archive.captions
    views = dict(caption_set_views(captions))
    if caption_set is None:
        prompts = captions["prompt"].unique().to_list()
        return (FUSED if len(prompts) > 1 else prompts[0]) if prompts else FUSED, captions
    if caption_set == FUSED and FUSED not in views:  # one prompt only: fused is all of it
        return caption_set, captions
    if caption_set not in views:
        raise TrsllavaError(f"caption set '{caption_set}' not in {archive.captions_path} (available: {sorted(views)})")
    return caption_set, views[caption_set]


def _with_text_rows(rows: pl.DataFrame, texts: list[str], where) -> pl.DataFrame:
    lookup = {text: i for i, text in enumerate(texts)}
    missing = [t for t in rows["text"].unique().to_list() if t not in lookup]
    if missing:
        raise TrsllavaError(f"{where} does not hold {len(missing)} text(s) of the caption table (e.g. {missing[0]!r}): "
                            f"the embeddings are stale; rebuild them")
    return rows.with_columns(pl.col("text").replace_strict(lookup, return_dtype=pl.Int64).alias("text_row"))


# -- text to image ------------------------------------------------------------------------------

def _query_representation(archive: Archive, query: str):
    if archive.lexical:
        return BM25Representation([query], None, archive.encoder.stopwords)
    return DenseRepresentation([query], archive.encoder.embed([query], "query"))  # a text-to-image query


def text_search(archive: Archive, query: str, k: int = 10, aggregation: str = "max", caption_set: str | None = None) -> SearchResult:
    check_aggregation(aggregation)
    if not query.strip():
        raise TrsllavaError("empty query")
    label, rows = caption_rows(archive, caption_set)
    rep = archive.captions_rep
    rows = _with_text_rows(rows, rep.texts, archive.captions_rep_dir)
    query_rep = _query_representation(archive, query)
    if aggregation == "max" and not archive.lexical:
        ranked = _faiss_max(archive, query_rep.query_vectors, rows, k)
    else:
        ranked = _exact(query_rep.scores_against(rep, np.array([0]))[0], rows, aggregation, k)
    hits = [
        Hit(rank=i + 1, score=float(r["score"]), image_id=r["image_id"], text=r["text"], prompt=r["prompt"], field=r["field"],
            path=archive.image_path(r["image_id"]), image_ids=[r["image_id"]])
        for i, r in enumerate(ranked)
    ]
    return SearchResult("text", query, [query], archive.dataset, archive.captioner, archive.encoder_name, aggregation, label,
                        "images", hits)


def _exact(scores: np.ndarray, rows: pl.DataFrame, aggregation: str, k: int) -> list[dict]:
    """Score every text; an image is the max (or mean) of its rows; its best row is the matched text."""
    scored = rows.with_columns(pl.Series("score", scores[rows["text_row"].to_numpy()].astype(np.float64)))
    best = scored.sort(["score", "text_row"], descending=[True, False]).group_by("image_id", maintain_order=True).first()
    if aggregation == "mean":
        means = scored.group_by("image_id").agg(pl.col("score").mean().alias("mean"))
        best = best.join(means, on="image_id").with_columns(pl.col("mean").alias("score")).drop("mean")
    return best.sort(["score", "image_id"], descending=[True, False]).head(k).to_dicts()


def _faiss_max(archive: Archive, vector: np.ndarray, rows: pl.DataFrame, k: int) -> list[dict]:
    """Top-k images by their best text through the FAISS index, widening until k images are found."""
    index = archive.faiss_index()
    vector = np.ascontiguousarray(vector, dtype=np.float32)
    if index.d != vector.shape[1]:
        raise TrsllavaError(f"{archive.index_dir}: index dimension {index.d} but encoder '{archive.encoder_name}' gives "
                            f"{vector.shape[1]}; rebuild the index")
    owners: dict[int, list[dict]] = {}
    for row in rows.select("text_row", "image_id", "text", "prompt", "field").iter_rows(named=True):
        owners.setdefault(row["text_row"], []).append(row)
    wanted = min(k, rows["image_id"].n_unique())
    depth = min(index.ntotal, max(4 * k, 32))
    while True:
        scores, ids = index.search(vector, depth)
        found: dict[str, dict] = {}
        for score, text_row in zip(scores[0], ids[0]):
            for owner in owners.get(int(text_row), []) if text_row >= 0 else []:
                if owner["image_id"] not in found:
                    found[owner["image_id"]] = {**owner, "score": float(score)}
        if len(found) >= wanted or depth >= index.ntotal:
            break
        depth = min(index.ntotal, depth * 4)
    return sorted(found.values(), key=lambda r: (-r["score"], r["image_id"]))[:k]


# -- image to text ------------------------------------------------------------------------------

def resolve_image(archive: Archive, image: str) -> str:
    """An image id of the dataset, or a file path mapped to its gallery id by file name."""
    images = archive.images
    ids = images["image_id"].to_list()
    if image in ids:
        return image
    name = Path(image).name
    by_name = images.filter(pl.col("filename") == name)
    if by_name.height == 0:  # gallery ids may carry folders (e.g. "sub/x.jpg"): compare base names
        by_name = images.filter(pl.col("filename").str.split("/").list.last() == name)
    if by_name.height == 1:
        return by_name["image_id"][0]
    if by_name.height > 1:
        raise TrsllavaError(f"image '{image}': several gallery images of '{archive.dataset}' are named {name}: "
                            f"{by_name['image_id'].to_list()[:5]}; give the image id")
    raise TrsllavaError(f"image '{image}' is neither an image id of dataset '{archive.dataset}' nor a file named like one "
                        f"of its {len(ids)} gallery images (e.g. {ids[:3]}); images outside the gallery are not captioned")


def image_search(archive: Archive, image: str, k: int = 10, captions: str = "human", aggregation: str = "max",
                 caption_set: str | None = None) -> SearchResult:
    check_aggregation(aggregation)
    if captions not in CAPTION_SOURCES:
        raise TrsllavaError(f"--captions '{captions}' is not one of {list(CAPTION_SOURCES)}")
    image_id = resolve_image(archive, image)
    label, generated = caption_rows(archive, caption_set)
    generated = _with_text_rows(generated, archive.captions_rep.texts, archive.captions_rep_dir)
    human = _with_text_rows(archive.references.with_columns(pl.lit(None, pl.String).alias("prompt"),
                                                            pl.lit(None, pl.String).alias("field")),
                            archive.references_rep.texts, archive.references_rep_dir)
    if captions == "human":
        queries, query_rep, documents, document_rep = generated, archive.captions_rep, human, archive.references_rep
        missing = f"no generated caption in caption set '{label}' of {archive.captions_path}"
    else:
        queries, query_rep, documents, document_rep = human, archive.references_rep, generated, archive.captions_rep
        missing = f"no human caption in {archive.references_path}"
    queries = queries.filter(pl.col("image_id") == image_id)
    if queries.is_empty():
        raise TrsllavaError(f"image '{image_id}' has {missing}")
    unique_rows, inverse = np.unique(queries["text_row"].to_numpy(), return_inverse=True)
    sims = query_rep.scores_against(document_rep, unique_rows).astype(np.float64)[inverse]  # query rows x doc texts
    candidates = np.unique(documents["text_row"].to_numpy())
    per_doc = sims[:, candidates]
    scores = per_doc.max(axis=0) if aggregation == "max" else per_doc.mean(axis=0)
    best_query = per_doc.argmax(axis=0)
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], document_rep.texts[candidates[i]]))[:k]
    query_texts = queries["text"].to_list()
    hits = []
    for rank, i in enumerate(order, start=1):
        holders = documents.filter(pl.col("text_row") == int(candidates[i]))
        holder_ids = list(dict.fromkeys(holders["image_id"].to_list()))
        if image_id in holder_ids:  # show the query image first when it holds the caption
            holder_ids.remove(image_id)
            holder_ids.insert(0, image_id)
        first = holders.filter(pl.col("image_id") == holder_ids[0]).row(0, named=True)
        hits.append(Hit(rank=rank, score=float(scores[i]), image_id=holder_ids[0], text=first["text"], prompt=first["prompt"],
                        field=first["field"], path=archive.image_path(holder_ids[0]), image_ids=holder_ids,
                        matched_query=query_texts[int(best_query[i])], same_image=image_id in holder_ids))
    return SearchResult("image", image_id, query_texts, archive.dataset, archive.captioner, archive.encoder_name, aggregation,
                        label, f"{captions} captions", hits, query_path=archive.image_path(image_id))
