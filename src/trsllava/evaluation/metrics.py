"""Recall@K under ties, computed exactly.

Each query is reduced to three counts about its best-scoring relevant item, score m:
  above          items scoring strictly more than m (all irrelevant, since m is the best relevant score)
  tied_other     irrelevant items scoring the same as m
  tied_relevant  relevant items scoring the same as m (at least 1)
Ranking the tie group uniformly at random, the first relevant item lands at position ``above + j``
where j is the position of the first of r relevant among n + r shuffled items, so

  P(hit@K) = 1 - C(n, k) / C(n + r, k),  k = K - above   (0 when k <= 0, 1 when k > n)

which is the *expected* recall; the optimistic bound puts the relevant items first in their tie
group (hit iff above < K), the pessimistic bound last (hit iff above + n < K). Ranks likewise:
optimistic above + 1, pessimistic above + n + 1, expected above + (n + r + 1) / (r + 1).
"""

from __future__ import annotations

import numpy as np
import polars as pl

KS = (1, 5, 10)
DIRECTIONS = ("i2t", "t2i")


def expected_hit(above: np.ndarray, tied_other: np.ndarray, tied_relevant: np.ndarray, k: int) -> np.ndarray:
    above = np.asarray(above, dtype=np.int64)
    n = np.asarray(tied_other, dtype=np.int64)
    r = np.asarray(tied_relevant, dtype=np.int64)
    slots = k - above  # positions of the tie group that fall inside the top K
    miss = np.ones(above.shape, dtype=np.float64)  # P(first `slots` positions all irrelevant)
    for j in range(k):
        active = j < slots
        factor = np.where(active, (n - j) / np.maximum(n + r - j, 1), 1.0)
        miss *= np.clip(factor, 0.0, 1.0)
    hit = 1.0 - miss
    return np.where(slots <= 0, 0.0, hit)


def optimistic_hit(above, tied_other, tied_relevant, k: int) -> np.ndarray:
    return (np.asarray(above) < k).astype(np.float64)


def pessimistic_hit(above, tied_other, tied_relevant, k: int) -> np.ndarray:
    return (np.asarray(above) + np.asarray(tied_other) < k).astype(np.float64)


HIT_FUNCTIONS = {"expected": expected_hit, "optimistic": optimistic_hit, "pessimistic": pessimistic_hit}


def with_ranks(stats: pl.DataFrame) -> pl.DataFrame:
    """Add the optimistic, expected and pessimistic rank of the first relevant item."""
    above, n, r = pl.col("above"), pl.col("tied_other"), pl.col("tied_relevant")
    return stats.with_columns(
        (above + 1).alias("rank_optimistic"),
        (above + (n + r + 1) / (r + 1)).alias("rank_expected"),
        (above + n + 1).alias("rank_pessimistic"),
    )


def recalls(stats: pl.DataFrame, ks=KS) -> dict[str, float]:
    """Percent recalls of one (caption set, aggregation): ``{direction}_r{K}`` is the expected
    recall, ``_optimistic`` / ``_pessimistic`` suffixes its bounds; ``mR`` and its bounds average
    the six recalls (both directions, K in ``ks``)."""
    out: dict[str, float] = {}
    for mode, hit in HIT_FUNCTIONS.items():
        suffix = "" if mode == "expected" else f"_{mode}"
        values = []
        for direction in DIRECTIONS:
            part = stats.filter(pl.col("direction") == direction)
            if part.is_empty():
                raise ValueError(f"no {direction} queries to evaluate")
            arrays = [part[c].to_numpy() for c in ("above", "tied_other", "tied_relevant")]
            for k in ks:
                value = 100.0 * float(hit(*arrays, k).mean())
                out[f"{direction}_r{k}{suffix}"] = value
                values.append(value)
        out[f"mR{suffix}"] = float(np.mean(values))
    return out
