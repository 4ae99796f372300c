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


def naive_rank(scores, tol):
    """Competition ("min") rank with tolerance: 1 + the number of items scoring more than s + tol."""
    return [1 + sum(1 for t in scores if t > s + tol) for s in scores]


def _aggregate(values, how):
    return max(values) if how == "max" else sum(values) / len(values)


def naive_t2i_scores(S, q, gen_images, gen_slots, image_ids, how, rrf_k=60):
    """Scores of every image for reference row q; S[q][g] is the similarity of reference row q and
    generated row g (instance level). rrf: each slot ranks the images holding a text in it."""
    if how != "rrf":
        out = []
        for image in image_ids:
            values = [S[q][g] for g, owner in enumerate(gen_images) if owner == image]
            out.append(_aggregate(values, how) if values else -np.inf)
        return out
    fused = {image: 0.0 for image in gen_images}
    for slot in sorted(set(gen_slots)):
        members = [g for g, s in enumerate(gen_slots) if s == slot]
        scores = [S[q][g] for g in members]
        for g, rank in zip(members, naive_rank(scores, 0.0)):
            fused[gen_images[g]] += 1.0 / (rrf_k + rank)
    return [fused.get(image, -np.inf) for image in image_ids]


def naive_i2t_scores(S, image, gen_images, how, rrf_k=60):
    """Scores of every reference row for ``image`` (rrf: each of its texts ranks all reference rows)."""
    own = [g for g, owner in enumerate(gen_images) if owner == image]
    if not own:
        return [-np.inf] * len(S)
    if how != "rrf":
        return [_aggregate([S[r][g] for g in own], how) for r in range(len(S))]
    total = [0.0] * len(S)
    for g in own:
        for r, rank in enumerate(naive_rank([S[r][g] for r in range(len(S))], 0.0)):
            total[r] += 1.0 / (rrf_k + rank)
    return total


def naive_fusion_evaluate(S_list, weights, k, ref_images, gen_images, gen_slots, image_ids, how="max",
                          tol=1e-6, fused_tol=1e-12, ks=(1, 5, 10), S_i2t_list=None):
    """Reciprocal-rank fusion of several encoders, one query at a time: each encoder's aggregated
    scores are ranked (competition rank with tolerance ``tol``), fused = sum w / (k + rank), and the
    fused scores evaluated with ties at ``fused_tol``. S_list: one instance-level matrix per encoder,
    S[r][g] = score of reference row r (query) against generated row g; S_i2t_list the same indexing
    with the generated text as the query, for asymmetric encoders such as BM25 (default: S_list)."""
    S_i2t_list = S_list if S_i2t_list is None else S_i2t_list
    def fuse(per_encoder):
        ranks = [naive_rank(scores, tol) for scores in per_encoder]
        return [sum(w / (k + r[i]) for w, r in zip(weights, ranks)) for i in range(len(ranks[0]))]

    t2i = [fuse([naive_t2i_scores(S, q, gen_images, gen_slots, image_ids, how) for S in S_list])
           for q in range(len(ref_images))]
    i2t = [fuse([naive_i2t_scores(S, image, gen_images, how) for S in S_i2t_list]) for image in image_ids]
    out = {}
    for k_ in ks:
        out[f"t2i_r{k_}"] = 100 * float(np.mean([
            expected_recall(scores, [image == q_image for image in image_ids], k_, fused_tol)[0]
            for scores, q_image in zip(t2i, ref_images)]))
        out[f"i2t_r{k_}"] = 100 * float(np.mean([
            expected_recall(scores, [owner == image for owner in ref_images], k_, fused_tol)[0]
            for scores, image in zip(i2t, image_ids)]))
    out["mR"] = float(np.mean([out[f"{d}_r{k_}"] for d in ("i2t", "t2i") for k_ in ks]))
    return out
