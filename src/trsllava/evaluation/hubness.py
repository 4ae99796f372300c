"""Hubness-aware scoring: CSLS, inverted softmax and querybank normalisation of the scores a query
ranks, with per-gallery-item statistics from a *query bank*, computed in memory-bounded blocks.

A hub is a gallery item (text-to-image: an image; image-to-text: a human caption) that scores high
for many queries whatever they ask. Each method subtracts a per-item penalty measured on a bank of
queries B, scored exactly like the evaluated queries (same encoder, caption set, aggregation):
S(b, g) is bank query b's score of gallery item g. Every normalised score stays in the units of the
raw score s(q, g), so that the evaluator's tie tolerance keeps its meaning:

  none              s(q, g)
  csls(k)           s(q, g) - r_k(g) / 2, r_k(g) the mean of g's k largest bank scores
                    (Conneau et al., "Word translation without parallel data", ICLR 2018: 2 s - r_k(g)
                    - r_k(q); the query's own term is constant along its ranking and left out)
  inverted-softmax  s(q, g) - T log( mean over b of exp(S(b, g) / T) ),  T = sigma / beta
                    (Smith et al., "Offline bilingual word vectors, orthogonal transformations and
                    the inverted softmax", ICLR 2017: exp(beta s) / sum_b exp(beta S(b, g)))
  qb-norm(beta, k)  the inverted-softmax score for a query whose best raw-scoring gallery item lies in
                    the activation set A (the items among the top k of at least one bank query), its
                    raw score otherwise: the dynamic inverted softmax of Bogolin et al., "Cross Modal
                    Retrieval with Querybank Normalisation", CVPR 2022

Log space. The inverted softmax ranks g by exp(s / T) / sum_b exp(S(b, g) / T), which overflows
(BM25 scores reach tens). Its logarithm times T, s - T logsumexp_b(S(b, g) / T), ranks identically
and is computed with a running maximum (never overflows). Subtracting log |B| (a mean instead of a
sum) changes no ranking and makes the penalty a soft maximum of g's bank scores, between their mean
(T large) and their maximum (T small). Tolerance: scores within the tie tolerance tau stay tied
after normalisation exactly when their penalties are equal; identical gallery items (the same texts)
get bitwise identical penalties, because each item's statistics are reduced from its own column in
the same order. Items with no finite bank score (an uncaptioned image) get no penalty (their scores
are -inf anyway).

Scale. beta multiplies scores divided by sigma, the standard deviation of the bank's scores (per
direction, caption set and aggregation), so one beta serves cosine similarities, BM25 scores and
rrf sums alike; sigma comes from an evenly spaced sample of at most ``SCALE_SAMPLE`` bank queries
(a first, short pass), the statistics from every bank query (a second pass).

Ties in the top k: the activation set takes, per bank query, every item within tau of its k-th best
score; a query is normalised when any item within tau of its best score is in A.

Banks (``bank``/``i2t_bank`` of the normalization spec): text-to-image, the distinct texts of the
query bank are the bank queries; image-to-text, either each distinct bank text (``captions``) or
each bank image represented by its bank captions, aggregated like the evaluated images' texts
(``images``). A ``transductive`` spec uses the evaluated queries themselves (labelled as such).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from ..encoders import Representation
from .normalization_spec import NormalizationSpec

log = logging.getLogger(__name__)

SCALE_SAMPLE = 2048  # bank queries whose scores give the scale sigma of inverted-softmax / qb-norm


# -- the query bank ---------------------------------------------------------------------------------

@dataclass
class QueryBank:
    """Bank queries: ``rep`` holds the distinct bank texts; ``text`` (rows) and ``group`` (the bank
    image of each row, sorted) describe the bank images for the image-to-text ``images`` mode."""

    rep: Representation
    text: np.ndarray  # per bank row: index into rep
    group: np.ndarray  # per bank row: bank image id (dense int), rows sorted by it

    @property
    def distinct(self) -> np.ndarray:
        """Indices into rep of the distinct bank texts (rep may hold more texts than the bank)."""
        return np.unique(self.text)

    @classmethod
    def from_table(cls, table: pl.DataFrame, rep: Representation) -> "QueryBank":
        """``table``: the bank rows (group, text) written by ``query_bank.write_query_bank``;
        ``rep``: their distinct texts embedded (any order)."""
        index = {text: i for i, text in enumerate(rep.texts)}
        missing = [t for t in table["text"].unique().to_list() if t not in index]
        if missing:
            raise ValueError(f"{len(missing)} query bank text(s) have no embedding, e.g. {missing[0]!r}")
        table = table.with_columns(pl.col("group").rank("dense").cast(pl.Int64).alias("_g") - 1).sort("_g", maintain_order=True)
        return cls(rep, np.array([index[t] for t in table["text"].to_list()], dtype=np.int64), table["_g"].to_numpy())

    def groups(self, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(text rows, owner) of the image-to-text pseudo-queries, owners sorted: ``captions`` (each
        distinct text alone) or ``images`` (each bank image with its texts)."""
        if mode == "captions":
            rows = self.distinct
            return rows, np.arange(len(rows), dtype=np.int64)
        return self.text, self.group


# -- running statistics per gallery item ----------------------------------------------------------

class ColumnStatistics:
    """Statistics of a stream of (bank queries x gallery items) score blocks, per gallery item:
    the ``top_k`` largest scores, the log-mean-exp at each temperature, and the activation sets
    (items within ``tolerance`` of a bank query's k-th best score) for each k of ``activation_ks``.
    Rows without any finite score (a bank query with no text) are skipped; -inf scores count as absent."""

    def __init__(self, n_items: int, top_k: int, temperatures: Sequence[float], activation_ks: Sequence[int],
                 tolerance: float):
        self.n_items = n_items
        self.tolerance = tolerance
        self.top = np.full((top_k, n_items), -np.inf)
        self.count = np.zeros(n_items, dtype=np.int64)
        self.lse_max = {t: np.full(n_items, -np.inf) for t in temperatures}
        self.lse_sum = {t: np.zeros(n_items) for t in temperatures}
        self.active = {k: np.zeros(n_items, dtype=bool) for k in activation_ks}

    def update(self, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float64)
        finite = np.isfinite(block)
        keep = finite.any(axis=1)
        block, finite = block[keep], finite[keep]
        if not len(block):
            return
        self.count += finite.sum(axis=0)
        top_k = self.top.shape[0]
        if top_k:
            merged = np.vstack([self.top, block])
            self.top = -np.partition(-merged, top_k - 1, axis=0)[:top_k]
        for temperature in self.lse_max:
            scaled = block / temperature
            old = self.lse_max[temperature]
            new = np.maximum(old, scaled.max(axis=0))
            seen = np.isfinite(new)
            shift = np.where(seen, new, 0.0)
            rescale = np.where(np.isfinite(old), np.exp(old - shift), 0.0)
            terms = np.where(finite, np.exp(np.where(finite, scaled, 0.0) - shift), 0.0).sum(axis=0)
            self.lse_sum[temperature] = self.lse_sum[temperature] * rescale + terms
            self.lse_max[temperature] = new
        for k, active in self.active.items():
            active |= self._top_k_members(block, finite, k).any(axis=0)

    def _top_k_members(self, block: np.ndarray, finite: np.ndarray, k: int) -> np.ndarray:
        """Per row, the items within the tolerance of its k-th best finite score (all finite items
        of a row that has k or fewer)."""
        n_finite = finite.sum(axis=1)
        if k >= block.shape[1]:
            return finite
        kth = -np.partition(-block, k - 1, axis=1)[:, k - 1]
        kth = np.where(n_finite >= k, kth, -np.inf)
        return finite & (block >= kth[:, None] - self.tolerance)

    # -- results, per gallery item --
    def top_mean(self, k: int) -> np.ndarray:
        """Mean of each item's k largest scores (of all its scores when it has fewer); 0 without any."""
        values = -np.sort(-self.top, axis=0)[:k]
        finite = np.isfinite(values)
        counts = finite.sum(axis=0)
        sums = np.where(finite, values, 0.0).sum(axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)

    def log_mean_exp(self, temperature: float) -> np.ndarray:
        """T log(mean_b exp(S(b, g) / T)) per item, 0 for an item without a finite score."""
        present = self.count > 0
        value = self.lse_max[temperature] + np.log(np.where(present, self.lse_sum[temperature], 1.0)) \
            - np.log(np.maximum(self.count, 1))
        return np.where(present, temperature * value, 0.0)


class ScaleStatistics:
    """Mean and standard deviation of every finite score of a stream of blocks."""

    def __init__(self):
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def update(self, block: np.ndarray) -> None:
        values = np.asarray(block, dtype=np.float64)
        values = values[np.isfinite(values)]
        self.n += values.size
        self.total += float(values.sum())
        self.squares += float((values * values).sum())

    @property
    def sigma(self) -> float:
        """The population standard deviation; 1 when it is undefined or zero (all scores equal)."""
        if self.n == 0:
            return 1.0
        mean = self.total / self.n
        variance = max(self.squares / self.n - mean * mean, 0.0)
        sigma = float(np.sqrt(variance))
        return sigma if sigma > 1e-12 * max(1.0, abs(mean)) else 1.0


# -- penalties and their application --------------------------------------------------------------

@dataclass
class ItemPenalty:
    """What one normalization subtracts from every score of a gallery item, and for qb-norm the
    activation set; ``scale`` is the sigma used (reported in the log)."""

    penalty: np.ndarray
    active: np.ndarray | None = None
    scale: float = 1.0

    def apply(self, scores: np.ndarray, tolerance: float) -> np.ndarray:
        """Normalised (queries x items) scores; -inf (an uncaptioned item) stays -inf."""
        normalised = scores - self.penalty[None, :]
        if self.active is None:
            return normalised
        best = scores.max(axis=1, keepdims=True)
        at_top = np.isfinite(scores) & (scores >= best - tolerance)
        use = (at_top & self.active[None, :]).any(axis=1)
        return np.where(use[:, None], normalised, scores)


def _needs(specs: Sequence[NormalizationSpec]) -> tuple[int, tuple[float, ...], tuple[int, ...], bool]:
    top_k = max([s.k for s in specs if s.method == "csls"], default=0)
    betas = tuple(sorted({s.beta for s in specs if s.method in ("inverted-softmax", "qb-norm")}))
    activation_ks = tuple(sorted({s.k for s in specs if s.method == "qb-norm"}))
    return top_k, betas, activation_ks, bool(betas)


def _penalty(spec: NormalizationSpec, stats: ColumnStatistics, sigma: float) -> ItemPenalty:
    if spec.method == "csls":
        return ItemPenalty(stats.top_mean(spec.k) / 2.0)
    temperature = sigma / spec.beta
    penalty = stats.log_mean_exp(temperature)
    if spec.method == "inverted-softmax":
        return ItemPenalty(penalty, scale=sigma)
    return ItemPenalty(penalty, active=stats.active[spec.k], scale=sigma)


Key = tuple  # (caption set label or None, aggregation)
BlockSource = Callable[[np.ndarray | None], Iterator[tuple[Key, np.ndarray]]]


def bank_statistics(source: BlockSource, n_rows: int, n_items: int, specs: Sequence[NormalizationSpec],
                    tolerance: float) -> dict[Key, dict[str, ItemPenalty]]:
    """Per key, the penalty of each spec, from the (key, bank block) stream of ``source``: called
    with an array of bank query rows (the scale sample) or None (every row)."""
    top_k, betas, activation_ks, scaled = _needs(specs)
    sigmas: dict[Key, float] = {}
    if scaled:
        sample = np.unique(np.linspace(0, n_rows - 1, min(n_rows, SCALE_SAMPLE)).round().astype(np.int64)) if n_rows else np.zeros(0, np.int64)
        scales: dict[Key, ScaleStatistics] = defaultdict(ScaleStatistics)
        for key, block in source(sample):
            scales[key].update(block)
        sigmas = {key: scale.sigma for key, scale in scales.items()}
    stats: dict[Key, ColumnStatistics] = {}
    for key, block in source(None):
        if key not in stats:
            sigma = sigmas.get(key, 1.0)
            stats[key] = ColumnStatistics(n_items, top_k, [sigma / beta for beta in betas], activation_ks, tolerance)
        stats[key].update(block)
    return {key: {spec.label: _penalty(spec, column, sigmas.get(key, 1.0)) for spec in specs}
            for key, column in stats.items()}


# -- one encoder's normalizations, both directions ------------------------------------------------

class Hubness:
    """The normalizations of one protocol (one encoder): their penalties per direction, caption set
    and aggregation, computed once from the bank before the evaluation."""

    def __init__(self, specs: Sequence[NormalizationSpec], penalties: dict, tolerance: float):
        self.specs = list(specs)
        self.penalties = penalties  # (direction, source) -> key -> label -> ItemPenalty
        self.tolerance = tolerance

    @property
    def labels(self) -> list[str]:
        return [spec.label for spec in self.specs]

    @staticmethod
    def source_of(spec: NormalizationSpec, direction: str) -> str:
        if spec.transductive:
            return "transductive"
        return "query-bank" if direction == "t2i" else spec.i2t_bank

    def normalized(self, direction: str, label: str, aggregation: str,
                   scores: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """(normalization label, normalised scores) for every spec, ``none`` first as given."""
        for spec in self.specs:
            if not spec.normalises(direction):
                yield spec.label, scores
                continue
            source = self.source_of(spec, direction)
            per_key = self.penalties[(direction, source)]
            key = (label, aggregation) if (label, aggregation) in per_key else (None, aggregation)
            yield spec.label, per_key[key][spec.label].apply(scores, self.tolerance)

    @classmethod
    def prepare(cls, protocol, views: Sequence, specs: Sequence[NormalizationSpec], bank: QueryBank | None) -> "Hubness":
        """Compute every spec's penalties for ``protocol`` (its queries, gallery and encoder) and
        ``views``; ``bank`` is required when a spec uses the query bank."""
        tolerance = protocol.settings.tie_tolerance
        penalties: dict = {}
        for direction in ("t2i", "i2t"):
            by_source = defaultdict(list)
            for spec in specs:
                if spec.normalises(direction):
                    by_source[cls.source_of(spec, direction)].append(spec)
            for source, group in by_source.items():
                if source != "transductive" and bank is None:
                    raise ValueError(f"normalization {group[0].label} needs a query bank")
                stream, n_rows, n_items = _source(protocol, views, direction, source, bank)
                penalties[(direction, source)] = bank_statistics(stream, n_rows, n_items, group, tolerance)
                sigmas = sorted({round(p.scale, 6) for per_label in penalties[(direction, source)].values()
                                 for p in per_label.values()})
                log.info("hubness %s, bank %s: %d bank queries, %d gallery items, %d normalization(s); scale sigma %s",
                         direction, source, n_rows, n_items, len(group), sigmas[:4] + (["..."] if len(sigmas) > 4 else []))
        return cls(specs, penalties, tolerance)


def _source(protocol, views: Sequence, direction: str, source: str, bank: QueryBank | None):
    """(block stream, number of bank queries, number of gallery items) of one direction and bank."""
    if direction == "t2i":
        if source == "transductive":
            rep, rows = protocol.reference_rep, np.unique(protocol.ref_text[protocol.t2i_queries])
        else:
            rep, rows = bank.rep, bank.distinct

        def t2i_stream(subset):
            chosen = rows if subset is None else rows[subset]
            for block in protocol.bank_blocks(len(chosen), views):
                yield from protocol.t2i_bank_scores(rep, chosen[block], views)

        return t2i_stream, len(rows), protocol.n_images
    if source == "transductive":
        images = protocol.query_images

        def i2t_transductive(subset):
            chosen = images if subset is None else images[subset]
            for block in protocol.i2t_blocks(views, progress=False, images=chosen):
                for view, aggregation, scores in protocol.i2t_scores(block, views):
                    yield (view.label, aggregation), scores

        return i2t_transductive, len(images), len(protocol.ref_text)
    text_rows, owner = bank.groups(source)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if len(owner) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(owner)]

    def i2t_stream(subset):
        chosen = np.arange(len(starts)) if subset is None else subset
        per_group = max(1.0, len(owner) / max(len(starts), 1))
        for block in protocol.bank_blocks(len(chosen), views, direction="i2t", texts_per_query=per_group):
            groups = chosen[block]
            members = np.concatenate([np.arange(starts[g], ends[g]) for g in groups]) if len(groups) else np.zeros(0, np.int64)
            for aggregation, _, scores in protocol.grouped_i2t_scores(bank.rep, text_rows[members], owner[members]):
                yield (None, aggregation), scores

    return i2t_stream, len(starts), len(protocol.ref_text)
