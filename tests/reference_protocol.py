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


# -- hubness-aware scoring, naively -------------------------------------------------------------------

def naive_penalties(bank_scores, method, k=None, beta=None, tol=1e-6):
    """Per gallery item the penalty (and for qb-norm the activation set), from a list of bank rows
    (each a list of scores over the gallery, -inf = no score), written straight from the papers'
    formulas: csls r_k / 2; inverted softmax T log(mean exp(S / T)), T = std(all finite bank
    scores) / beta; qb-norm the same with the items within tol of a bank row's k-th best."""
    import math

    rows = [row for row in bank_scores if any(math.isfinite(v) for v in row)]
    n_items = len(bank_scores[0])
    columns = [[row[g] for row in rows if math.isfinite(row[g])] for g in range(n_items)]
    if method == "csls":
        penalty = []
        for values in columns:
            top = sorted(values, reverse=True)[:k]
            penalty.append(sum(top) / len(top) / 2 if top else 0.0)
        return penalty, None
    every = [v for row in rows for v in row if math.isfinite(v)]
    mean = sum(every) / len(every)
    sigma = math.sqrt(sum((v - mean) ** 2 for v in every) / len(every)) or 1.0
    temperature = sigma / beta
    penalty = [temperature * math.log(sum(math.exp(v / temperature) for v in values) / len(values)) if values else 0.0
               for values in columns]
    if method == "inverted-softmax":
        return penalty, None
    active = [False] * n_items
    for row in rows:
        finite = sorted((v for v in row if math.isfinite(v)), reverse=True)
        kth = finite[k - 1] if len(finite) >= k else -math.inf
        for g, v in enumerate(row):
            if math.isfinite(v) and v >= kth - tol:
                active[g] = True
    return penalty, active


def naive_normalize(scores, penalty, active=None, tol=1e-6):
    """One query's normalised scores: minus the penalty (qb-norm: only when an item within tol of
    the query's best score is active)."""
    import math

    if active is not None:
        best = max(scores)
        if not any(math.isfinite(s) and s >= best - tol and a for s, a in zip(scores, active)):
            return list(scores)
    return [s - p for s, p in zip(scores, penalty)]


def naive_normalized_evaluate(S, S_bank, ref_images, gen_images, gen_slots, image_ids, method, how="max", k=None,
                              beta=None, tol=1e-6, ks=(1, 5, 10), R_bank=None, bank_groups=None):
    """Recall of one normalization, both directions, one query at a time. S[r][g]: score of
    reference row r and generated row g (symmetric encoder); S_bank[b][g]: bank text b against
    generated row g (t2i bank); R_bank[b][r]: bank text b against reference row r (i2t bank);
    bank_groups: the bank texts of each i2t pseudo-query (default: each text alone)."""
    t2i_bank = [naive_t2i_scores(S_bank, b, gen_images, gen_slots, image_ids, how) for b in range(len(S_bank))]
    t2i_pen, t2i_act = naive_penalties(t2i_bank, method, k, beta, tol)
    groups = bank_groups or [[b] for b in range(len(R_bank))]
    i2t_bank = []
    for members in groups:
        if how == "rrf":
            total = [0.0] * len(ref_images)
            for b in members:
                for r, rank in enumerate(naive_rank(R_bank[b], 0.0)):
                    total[r] += 1.0 / (60 + rank)
            i2t_bank.append(total)
        else:
            i2t_bank.append([_aggregate([R_bank[b][r] for b in members], how) for r in range(len(ref_images))])
    i2t_pen, i2t_act = naive_penalties(i2t_bank, method, k, beta, tol)
    out = {}
    t2i = [naive_normalize(naive_t2i_scores(S, q, gen_images, gen_slots, image_ids, how), t2i_pen, t2i_act, tol)
           for q in range(len(ref_images))]
    i2t = [naive_normalize(naive_i2t_scores(S, image, gen_images, how), i2t_pen, i2t_act, tol) for image in image_ids]
    for k_ in ks:
        out[f"t2i_r{k_}"] = 100 * float(np.mean([
            expected_recall(scores, [image == q_image for image in image_ids], k_, tol)[0]
            for scores, q_image in zip(t2i, ref_images)]))
        out[f"i2t_r{k_}"] = 100 * float(np.mean([
            expected_recall(scores, [owner == image for owner in ref_images], k_, tol)[0]
            for scores, image in zip(i2t, image_ids)]))
    out["mR"] = float(np.mean([out[f"{d}_r{k_}"] for d in ("i2t", "t2i") for k_ in ks]))
    return out
