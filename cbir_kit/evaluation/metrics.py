"""Stage 6, evaluation: retrieval metrics, each with its formula; plain numpy (notebook 03).

Notation: for one query, ``rel[r] = 1`` if the item at rank ``r`` (1-based) is relevant,
``R`` = the number of relevant items in the gallery (the query itself never counts).

* P@k         = (1/k) * sum_{r<=k} rel[r]
* R@k         = (1/R) * sum_{r<=k} rel[r]                (queries with R = 0 skipped)
* hit rate@k  = 1 if sum_{r<=k} rel[r] > 0 else 0         (not a recall: one hit is enough)
* AP          = (1/R) * sum_{r : rel[r]=1} P@r            over the full ranking; relevant items
                that never appear in the ranking contribute 0 (queries with R = 0 skipped)
* mAP         = mean of AP over queries
* set metrics of a retrieved set S (top-k or thresholded), macro-averaged over queries:
  precision = |S ∩ Rel| / |S| (0 when S is empty), recall = |S ∩ Rel| / R,
  F1 = 2 P R / (P + R) (0 when P + R = 0), averaged per query then over queries.

Each ``*_at_k`` and ``mean_*`` function returns the mean over queries; the per-query
arrays come from :func:`average_precisions` and :func:`set_scores`.

Curves: :func:`precision_recall_over_k` (the top-k set for each k) and
:func:`precision_recall_over_thresholds` (the set {score >= t} for each t) give macro
precision, recall and F1 at every cut-off.

@k variants of published course projects keep their own names, because they are not the
mAP above:

* AP@k/k (binary-hash project's "mAP@k") = (1/k) * sum_{r<=k, rel[r]} P@r   (divides by k)
* AHP@k   = (1/k) * sum_{r<=k} HP@r,  HP@r = sum_{i<=r} sim(q, c_i) / sum_{i<=r} ideal_i,
            sim = 1 same class, 0.5 same superclass, 0 otherwise; ideal = the similarities
            of the whole gallery sorted from high to low.

The revisitop protocol (Easy/Medium/Hard, trapezoidal AP) lives in :mod:`cbir_kit.evaluation.revisitop_map`.
"""
from __future__ import annotations

import numpy as np


def relevance_matrix(ranked_ids: np.ndarray, query_labels, gallery_labels) -> np.ndarray:
    """``rel[q, r] = gallery_labels[ranked_ids[q, r]] == query_labels[q]``; id -1 counts as not relevant."""
    ranked_ids = np.asarray(ranked_ids)
    gallery_labels = np.asarray(gallery_labels)
    query_labels = np.asarray(query_labels)
    rel = gallery_labels[np.clip(ranked_ids, 0, None)] == query_labels[:, None]
    return rel & (ranked_ids >= 0)


def _valid(n_relevant: np.ndarray) -> np.ndarray:
    return np.asarray(n_relevant) > 0


def precision_at_k(rel: np.ndarray, k: int) -> float:
    """P@k = (1/k) sum_{r<=k} rel[r], mean over queries."""
    return float(np.mean(rel[:, :k].sum(axis=1) / k))


def recall_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """R@k = (1/R) sum_{r<=k} rel[r], mean over queries with R > 0."""
    valid = _valid(n_relevant)
    hits = rel[valid, :k].sum(axis=1)
    return float(np.mean(hits / np.asarray(n_relevant)[valid])) if valid.any() else float("nan")


def hit_rate_at_k(rel: np.ndarray, k: int) -> float:
    """Fraction of queries with at least one relevant item in the top k."""
    return float(np.mean(rel[:, :k].any(axis=1)))


def average_precisions(rel: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-query AP = (1/R) sum_{r: rel[r]} P@r; NaN for queries with R = 0."""
    rel = np.asarray(rel, dtype=bool)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    ranks = np.arange(1, rel.shape[1] + 1)
    precision_at_r = np.cumsum(rel, axis=1) / ranks
    total = np.where(rel, precision_at_r, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_relevant > 0, total / n_relevant, np.nan)


def average_precision(rel_row, n_relevant: int) -> float:
    """AP of one ranked list (see :func:`average_precisions`)."""
    return float(average_precisions(np.asarray(rel_row, bool)[None, :], np.array([n_relevant]))[0])


def mean_average_precision(rel: np.ndarray, n_relevant: np.ndarray) -> float:
    """mAP = mean of AP over queries with at least one relevant item."""
    aps = average_precisions(rel, n_relevant)
    return float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")


def average_precision_from_scores(relevant, scores) -> float:
    """AP of a scored (not ranked) list, treating tied scores as one rank group.

    AP = sum_t (R_t - R_{t-1}) * P_t over the distinct scores t from high to low, where
    P_t and R_t are precision and recall of everything scored >= t.  Without ties this
    equals :func:`average_precision` of the sorted list; it is scikit-learn's definition.
    """
    relevant = np.asarray(relevant, bool)
    scores = np.asarray(scores, dtype=np.float64)
    if relevant.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], relevant[order]
    group_end = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(y)[group_end]
    retrieved = group_end + 1
    recall = tp / relevant.sum()
    precision = tp / retrieved
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def set_scores(n_hits, n_retrieved, n_relevant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query precision, recall, F1 of retrieved sets from their counts.

    precision = hits / retrieved (0 if nothing retrieved), recall = hits / R (NaN if R = 0),
    F1 = 2PR / (P + R) (0 if P + R = 0; NaN if R = 0).
    """
    n_hits = np.asarray(n_hits, np.float64)
    n_retrieved = np.asarray(n_retrieved, np.float64)
    n_relevant = np.asarray(n_relevant, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_retrieved > 0, n_hits / n_retrieved, 0.0)
        recall = np.where(n_relevant > 0, n_hits / n_relevant, np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where(n_relevant > 0, f1, np.nan)
    return precision, recall, f1


def set_metrics(n_hits, n_retrieved, n_relevant) -> dict[str, float]:
    """Macro precision, recall and F1 over queries with R > 0 (see :func:`set_scores`)."""
    precision, recall, f1 = set_scores(n_hits, n_retrieved, n_relevant)
    valid = _valid(n_relevant)
    if not valid.any():
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    return {"precision": float(precision[valid].mean()), "recall": float(recall[valid].mean()),
            "f1": float(f1[valid].mean())}


NO_RELEVANT_RULES = ("skip", "zero")


def query_mean(values, n_relevant, no_relevant: str = "skip") -> float:
    """The mean over queries of per-query ``values``, under the one rule for queries with no relevant item.

    ``skip`` (the default): they are left out of the mean of every metric (their AP, recall and
    F1 do not exist, and their P@k would only measure the dataset).  ``zero``: they count as 0 in
    every metric, trec_eval's rule when such queries are in its qrels (``trec_eval -c``).
    """
    values, has = np.asarray(values, np.float64), np.asarray(n_relevant) > 0
    if no_relevant == "skip":
        return float(values[has].mean()) if has.any() else float("nan")
    if no_relevant == "zero":
        return float(np.where(has, values, 0.0).mean()) if len(values) else float("nan")
    raise ValueError(f"no_relevant={no_relevant!r} must be one of {NO_RELEVANT_RULES}")


def topk_metrics(rel: np.ndarray, n_relevant: np.ndarray, k: int, no_relevant: str = "skip") -> dict[str, float]:
    """mAP over the ranking in ``rel`` plus P@1/5/10, R@10, hit rate@k and top-k set metrics.

    Every one is a mean over queries under the same rule for queries with no relevant item
    (:func:`query_mean`).
    """
    rel, n_relevant = np.asarray(rel, bool), np.asarray(n_relevant)
    kk = min(k, rel.shape[1])
    per_query = {"mAP": average_precisions(rel, n_relevant)}
    for cut in (1, 5, 10):
        per_query[f"P@{cut}"] = rel[:, :cut].sum(axis=1) / cut
    with np.errstate(invalid="ignore", divide="ignore"):
        per_query["R@10"] = rel[:, :10].sum(axis=1) / n_relevant
    per_query[f"hit_rate@{k}"] = rel[:, :k].any(axis=1).astype(np.float64)
    precision, recall, f1 = set_scores(rel[:, :kk].sum(axis=1), np.full(len(rel), kk), n_relevant)
    per_query.update(precision=precision, recall=recall, f1=f1)
    return {name: query_mean(values, n_relevant, no_relevant) for name, values in per_query.items()}


# --- more of what retrieval papers and pytorch-metric-learning report ---------------------

def _per_relevant_query(values: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """``values`` with NaN for queries that have no relevant item (they are skipped, as for AP)."""
    return np.where(np.asarray(n_relevant) > 0, values, np.nan)


def r_precisions(rel: np.ndarray, n_relevant) -> np.ndarray:
    """Per query, R-precision = |relevant items in the top R| / R, R = the query's number of relevant items."""
    rel, n_relevant = np.asarray(rel, bool), np.asarray(n_relevant)
    cum = np.cumsum(rel, axis=1)
    hits = cum[np.arange(len(rel)), np.clip(n_relevant, 1, rel.shape[1]) - 1]
    return _per_relevant_query(hits / np.maximum(n_relevant, 1), n_relevant)


def map_at_r_values(rel: np.ndarray, n_relevant) -> np.ndarray:
    """Per query, MAP@R = (1/R) sum_{i <= R} P(i) rel(i) (Musgrave, Belongie & Lim, ECCV 2020).

    AP with the ranking cut at R: a query scores 1 only if its R relevant items fill the top R.
    """
    rel, n_relevant = np.asarray(rel, bool), np.asarray(n_relevant)
    ranks = np.arange(1, rel.shape[1] + 1)
    precision = np.cumsum(rel, axis=1) / ranks
    within = ranks[None, :] <= n_relevant[:, None]
    return _per_relevant_query((precision * rel * within).sum(axis=1) / np.maximum(n_relevant, 1), n_relevant)


def reciprocal_ranks(rel: np.ndarray, n_relevant) -> np.ndarray:
    """Per query, 1 / (rank of the first relevant item), 0 when none is returned; its mean is MRR."""
    rel = np.asarray(rel, bool)
    found = rel.any(axis=1)
    return _per_relevant_query(np.where(found, 1.0 / (rel.argmax(axis=1) + 1), 0.0), n_relevant)


def ndcg_at_k(rel: np.ndarray, n_relevant, k: int) -> np.ndarray:
    """Per query, nDCG@k with binary gains: DCG@k = sum_{i <= k} rel_i / log2(i + 1), divided by the
    ideal IDCG@k = sum_{i <= min(R, k)} 1 / log2(i + 1) of a ranking with the R relevant items first."""
    rel, n_relevant = np.asarray(rel, bool)[:, :k], np.asarray(n_relevant)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (rel * discount[:rel.shape[1]]).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_relevant, k)]
    return _per_relevant_query(dcg / np.where(ideal > 0, ideal, 1.0), n_relevant)


def ranking_extras(rel: np.ndarray, n_relevant, k: int) -> dict[str, np.ndarray]:
    """Per-query MAP@R, R-precision, reciprocal rank and nDCG@k of rankings ``rel``."""
    return {"MAP@R": map_at_r_values(rel, n_relevant), "R-precision": r_precisions(rel, n_relevant),
            "MRR": reciprocal_ranks(rel, n_relevant), f"nDCG@{k}": ndcg_at_k(rel, n_relevant, k)}


# --- per class ----------------------------------------------------------------------------

def per_class_means(values, labels) -> dict[str, tuple[int, float]]:
    """Per class of the queries: ``(number of queries with a value, mean value)``; NaN values are skipped."""
    values, labels = np.asarray(values, float), np.asarray(labels)
    out = {}
    for c in np.unique(labels):
        v = values[(labels == c) & np.isfinite(values)]
        out[str(c)] = (int(len(v)), float(v.mean()) if len(v) else float("nan"))
    return out


def topk_class_matrix(ranked_ids, query_labels, gallery_labels) -> tuple[list[str], np.ndarray]:
    """Who fills the top k: ``C[i, j]`` = share of the results of class-i queries that have class j.

    ``ranked_ids`` (Q, k) are gallery ids, -1 for nothing; each row of ``C`` sums to 1 (a class
    whose queries got no result has a row of zeros).  The diagonal is each class's precision@k.
    Map both label arrays to superclasses first to get the matrix rolled up to them.
    """
    ranked_ids = np.asarray(ranked_ids)
    query_labels, gallery_labels = np.asarray(query_labels).astype(str), np.asarray(gallery_labels).astype(str)
    classes = sorted(set(query_labels) | set(gallery_labels))
    position = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)))
    valid = ranked_ids >= 0
    rows = np.repeat([position[c] for c in query_labels], ranked_ids.shape[1]).reshape(ranked_ids.shape)[valid]
    cols = np.array([position[c] for c in gallery_labels])[ranked_ids[valid]]
    np.add.at(counts, (rows, cols), 1)
    totals = counts.sum(axis=1, keepdims=True)
    return classes, np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


# --- curves: set metrics at many cut-offs (top-k) or score thresholds ---------------------

def hits_at_ks(rel: np.ndarray, ks) -> np.ndarray:
    """(Q, len(ks)) number of relevant items in the top ``k`` for each cut-off ``k``."""
    cum = np.cumsum(np.asarray(rel, bool), axis=1)
    ks = np.minimum(np.asarray(ks, dtype=np.int64), rel.shape[1])
    return cum[:, ks - 1]


def threshold_counts(scores: np.ndarray, rel: np.ndarray, thresholds,
                     higher_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Hits and retrieved counts (each (Q, T)) of thresholded retrieval over ranked lists.

    ``scores[q]`` are the scores of the ranked list ``rel[q]``, best first.  The retrieved
    set at threshold t is {score >= t} (similarities) or {score <= t} (distances,
    ``higher_is_better=False``).
    """
    scores = np.asarray(scores, np.float64)
    thresholds = np.asarray(thresholds, np.float64)
    cum = np.concatenate([np.zeros((len(rel), 1), np.int64), np.cumsum(np.asarray(rel, bool), axis=1)], axis=1)
    n_retrieved = np.empty((len(scores), len(thresholds)), np.int64)
    for q in range(len(scores)):
        if higher_is_better:
            n_retrieved[q] = np.searchsorted(-scores[q], -thresholds, side="right")
        else:
            n_retrieved[q] = np.searchsorted(scores[q], thresholds, side="right")
    return np.take_along_axis(cum, n_retrieved, axis=1), n_retrieved


def set_metrics_curve(hits: np.ndarray, n_retrieved: np.ndarray, n_relevant) -> dict[str, np.ndarray]:
    """Macro precision, recall, F1 (over queries with R > 0) at each column of (Q, T) counts."""
    n_relevant = np.asarray(n_relevant)
    n_retrieved = np.broadcast_to(n_retrieved, hits.shape)
    precision, recall, f1 = set_scores(hits, n_retrieved, n_relevant[:, None])
    valid = _valid(n_relevant)
    if not valid.any():
        nan = np.full(hits.shape[1], np.nan)
        return {"precision": nan, "recall": nan.copy(), "f1": nan.copy()}
    return {"precision": precision[valid].mean(axis=0), "recall": recall[valid].mean(axis=0),
            "f1": f1[valid].mean(axis=0)}


def precision_recall_over_k(rel: np.ndarray, n_relevant, ks=None) -> dict[str, np.ndarray]:
    """Macro precision/recall/F1 of the top-k set for each k (default 1..depth).

    precision(k) = mean_q hits_q(k) / k, recall(k) = mean_q hits_q(k) / R_q, over queries with R > 0.
    """
    ks = np.arange(1, rel.shape[1] + 1) if ks is None else np.asarray(ks, np.int64)
    out = set_metrics_curve(hits_at_ks(rel, ks), np.minimum(ks, rel.shape[1]), n_relevant)
    return {"k": ks, **out}


def precision_recall_over_thresholds(scores: np.ndarray, rel: np.ndarray, n_relevant, thresholds,
                                     higher_is_better: bool = True) -> dict[str, np.ndarray]:
    """Macro precision/recall/F1 of thresholded retrieval at each threshold (see :func:`threshold_counts`).

    An empty retrieved set has precision 0, so precision falls to 0 at strict thresholds.
    """
    hits, n_retrieved = threshold_counts(scores, rel, thresholds, higher_is_better)
    return {"threshold": np.asarray(thresholds, np.float64), **set_metrics_curve(hits, n_retrieved, n_relevant)}


# --- @k variants of published course projects, each under its own name ----------------

def ap_at_k_over_k(rel: np.ndarray, k: int) -> np.ndarray:
    """Per-query AP@k of the CIFAR-100 binary-hash project: (1/k) * sum_{r<=k, rel[r]} P@r.

    It divides by k, not by the number of relevant items, so with 100 images per class
    AP@250 is at most 100/250 = 0.4.  Not the same as the full-ranking AP.
    """
    rel = np.asarray(rel, bool)[:, :k]
    precision_at_r = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    return np.where(rel, precision_at_r, 0.0).sum(axis=1) / k


def map_at_k_over_k(rel: np.ndarray, k: int) -> float:
    """The binary-hash project's "mAP@k": mean over queries of :func:`ap_at_k_over_k`."""
    return float(np.mean(ap_at_k_over_k(rel, k)))


def hierarchy_similarity(query_labels, item_labels, coarse_of) -> np.ndarray:
    """Graded class similarity: 1 same class, 0.5 same superclass, 0 otherwise.

    ``coarse_of`` maps a fine label to its superclass (a sequence indexed by fine label, or a
    dict), e.g. the CIFAR-100 fine -> coarse hierarchy.  Shapes broadcast like numpy.
    """
    q = np.asarray(query_labels)
    g = np.asarray(item_labels)
    lookup = np.vectorize(coarse_of.__getitem__, otypes=[object]) if isinstance(coarse_of, dict) else None
    cq = lookup(q) if lookup else np.asarray(coarse_of)[q]
    cg = lookup(g) if lookup else np.asarray(coarse_of)[g]
    return np.where(q == g, 1.0, np.where(cq == cg, 0.5, 0.0))


def hierarchical_gains(ranked_ids: np.ndarray, query_labels, gallery_labels, coarse_of,
                       exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gains of a ranking and of the ideal ranking under :func:`hierarchy_similarity`.

    Returns ``(gains, ideal)``, both (Q, depth): ``gains[q, r]`` = sim(query q, item at rank r)
    (0 for id -1), and ``ideal[q]`` = the similarities of all gallery items to query q sorted
    from high to low (the best possible ranking), truncated to ``depth``.  ``exclude[q]`` is a
    gallery id left out of query q's ideal list (the query itself in leave-one-out).
    """
    ranked_ids = np.asarray(ranked_ids)
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    depth = ranked_ids.shape[1]
    gains = hierarchy_similarity(query_labels[:, None], gallery_labels[np.clip(ranked_ids, 0, None)], coarse_of)
    gains = np.where(ranked_ids >= 0, gains, 0.0)
    ideal = np.empty((len(query_labels), depth))
    for q, label in enumerate(query_labels):
        sims = hierarchy_similarity(label, gallery_labels, coarse_of)
        if exclude is not None and exclude[q] >= 0:
            sims = np.delete(sims, exclude[q])
        top = -np.sort(-sims)[:depth]
        ideal[q] = np.pad(top, (0, depth - len(top)))
    return gains, ideal


def ahp_at_k(gains: np.ndarray, ideal: np.ndarray, k: int) -> np.ndarray:
    """Per-query average hierarchical precision AHP@k of the binary-hash project.

    HP@r = sum_{i<=r} gains[i] / sum_{i<=r} ideal[i];  AHP@k = (1/k) sum_{r<=k} HP@r.
    Queries whose ideal prefix sum is 0 (nothing similar at all) give NaN.

    The ideal must be the best ranking of *this* gallery (:func:`hierarchical_gains` sorts the
    gallery's own similarities).  The hash project's code assumes 100 images per class instead;
    on an unbalanced gallery that ideal is wrong in both directions: a class with fewer images is
    held to gains that do not exist, so even a perfect ranking scores below 1, and a class with
    more is held to too little.  With the gallery's own ideal a perfect ranking scores exactly 1
    on any gallery, which is what makes HP a precision (tests/test_metrics_course.py).
    """
    got = np.cumsum(np.asarray(gains, np.float64)[:, :k], axis=1)
    best = np.cumsum(np.asarray(ideal, np.float64)[:, :k], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        hp = np.where(best > 0, got / best, np.nan)
    return hp.mean(axis=1)


def mahp_at_k(gains: np.ndarray, ideal: np.ndarray, k: int) -> float:
    """mAHP@k: mean of :func:`ahp_at_k` over queries (NaN queries skipped)."""
    values = ahp_at_k(gains, ideal, k)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def overlap_with_exact(found_ids, exact_ids) -> float:
    """Share of the exact top-k that a method returned: mean over queries of |found ∩ exact| / k.

    ``exact_ids`` is (Q, k), the exact search's top k; ``found_ids`` (Q, m) any list per query
    (an ANN top-k, a hash shortlist); ids -1 (nothing found) are ignored.  recall@k_vs_exact
    and the shortlist recall are this measure.
    """
    exact_ids = np.asarray(exact_ids)
    found = [len(np.intersect1d(f[f >= 0], e)) for f, e in zip(np.asarray(found_ids), exact_ids)]
    return float(np.mean(found) / exact_ids.shape[1])
