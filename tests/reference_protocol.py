"""A deliberately naive, independent implementation of the protocol, for checking the real one.

One query at a time, every item scored from scratch, expected recall by direct enumeration of the
tie group with math.comb; no blocks, no deduplication, no shared code with trsllava.evaluation.
"""

from math import comb

import numpy as np


def expected_recall(scores, relevant, k, tol=1e-6):
    best = max(s for s, r in zip(scores, relevant) if r)
    above = sum(1 for s in scores if s > best + tol)
    tied = [r for s, r in zip(scores, relevant) if best - tol <= s <= best + tol]
    n, r = tied.count(False), tied.count(True)
    slots = k - above
    if slots <= 0:
        return 0.0, 0.0, 0.0
    expected = 1.0 - comb(n, slots) / comb(n + r, slots) if slots <= n else 1.0
    return expected, 1.0, float(above + n < k)


def naive_evaluate(ref_vecs, ref_images, gen_vecs, gen_images, image_ids, how="max", ks=(1, 5, 10)):
    """ref_vecs/gen_vecs: one row per caption instance; *_images: owning image id per row.
    Returns {metric: percent} with keys like t2i_r1 and mR (expected recall)."""
    sims = lambda a, b: float(np.dot(a, b))
    agg = {"max": max, "mean": lambda v: sum(v) / len(v)}[how]
    out = {}
    for k in ks:
        hits = []
        for q, q_image in zip(ref_vecs, ref_images):
            scores = []
            for image in image_ids:
                values = [sims(q, g) for g, owner in zip(gen_vecs, gen_images) if owner == image]
                scores.append(agg(values) if values else -np.inf)
            hits.append(expected_recall(scores, [image == q_image for image in image_ids], k)[0])
        out[f"t2i_r{k}"] = 100 * float(np.mean(hits))
        hits = []
        for image in image_ids:
            own = [g for g, owner in zip(gen_vecs, gen_images) if owner == image]
            scores = [agg([sims(g, c) for g in own]) if own else -np.inf for c in ref_vecs]
            hits.append(expected_recall(scores, [owner == image for owner in ref_images], k)[0])
        out[f"i2t_r{k}"] = 100 * float(np.mean(hits))
    out["mR"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks]))
    return out
