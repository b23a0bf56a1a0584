"""Retrieval metrics, each with its formula.  All take plain numpy arrays.

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


def topk_metrics(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> dict[str, float]:
    """mAP over the ranking in ``rel`` plus P@1/5/10, R@10, hit rate@k and top-k set metrics."""
    n_relevant = np.asarray(n_relevant)
    out = {"mAP": mean_average_precision(rel, n_relevant)}
    for cut in (1, 5, 10):
        out[f"P@{cut}"] = precision_at_k(rel, cut)
    out["R@10"] = recall_at_k(rel, n_relevant, 10)
    out[f"hit_rate@{k}"] = hit_rate_at_k(rel, k)
    kk = min(k, rel.shape[1])
    out.update(set_metrics(rel[:, :kk].sum(axis=1), np.full(len(rel), kk), n_relevant))
    return out
