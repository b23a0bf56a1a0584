"""Stage 3, index: exact k-nearest-neighbour search, a faiss wrapper and a plain numpy reference (notebook 02).

Similarity is the inner product s(q, g) = q . g (the cosine similarity for L2-normalised
features; metric ``"ip"``), or the negated squared Euclidean distance
s(q, g) = -||q - g||^2 (metric ``"l2"``; faiss returns the distance itself).
Both return ``(scores, ids)`` of shape (Q, k), best first.  The tie rule of every ranking:
equal scores are ordered by the lower gallery id first (:func:`ties_by_id`; faiss's own order of
ties is undefined), and that includes the cut: when several items tie with the k-th, the lower ids
enter the top k (:func:`search_ties_at_cut`).  So an exact top k is the first k of the full ranking
``numpy.argsort(-s, kind="stable")``, whatever faiss's heap did.  An approximate index ranks the
candidates it found by the same rule.

Leave-one-out (the queries are the gallery): every index's ``search(queries, k, own_ids=...)``
takes the gallery id of each query itself and never returns it (:func:`without_own`, scikit-learn's
``kneighbors(X=None)`` rule, checked against it); callers never drop entries themselves.
"""
from __future__ import annotations

import faiss
import numpy as np

from ..errors import CbirError

METRICS = ("ip", "l2")


def as_float32_matrix(x, name: str) -> np.ndarray:
    """A C-contiguous float32 (N, D) copy-if-needed of ``x``, with clear errors."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise CbirError(f"{name} must be a 2-D array (N, D); got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise CbirError(f"{name} has NaN or infinite values in rows {bad[:10].tolist()}; "
                        "drop those rows (images that failed to load) before searching")
    return x


def check_k(k: int, n_gallery: int) -> int:
    if k < 1:
        raise CbirError(f"k must be at least 1; got {k}")
    if n_gallery == 0:
        raise CbirError("the gallery is empty; add images before searching")
    return min(int(k), n_gallery)


def ties_by_id(scores: np.ndarray, ids: np.ndarray, higher_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Rows re-ordered best first with equal scores by the lower gallery id (-1 = nothing, last)."""
    scores, ids = np.asarray(scores), np.asarray(ids)
    if ids.size == 0:
        return scores, ids
    primary = -scores if higher_is_better else scores
    missing = ids < 0
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, ids), primary, missing), axis=-1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def search_ties_at_cut(search, queries: np.ndarray, k: int, n_total: int,
                       higher_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``search(queries, k)`` under the tie rule at the cut, too.

    faiss keeps an arbitrary subset of the items that tie with the k-th.  So each query is searched
    for one more item, m = k + 1: if the m-th scores strictly worse than the k-th (or the gallery is
    exhausted), every item tied with the k-th is among the m, and :func:`ties_by_id` then puts
    the lower ids first.  Otherwise m doubles for that query until the tie group ends inside it.
    Costs one extra item per search, and a re-search only for the queries that tie at the cut
    (binary Hamming distances tie often: 98 of 100 Corel-1K queries at a 200-code shortlist).
    """
    k = check_k(k, n_total)
    scores_out = ids_out = None
    rows = np.arange(len(queries))
    width = k + 1
    while len(rows):
        m = min(width, n_total)
        scores, ids = ties_by_id(*search(queries[rows], m), higher_is_better=higher_is_better)
        if scores_out is None:
            scores_out = np.empty((len(queries), k), dtype=scores.dtype)
            ids_out = np.empty((len(queries), k), dtype=ids.dtype)
        ended = (m == n_total) | (ids[:, -1] < 0) | (scores[:, k - 1] != scores[:, -1])
        scores_out[rows[ended]], ids_out[rows[ended]] = scores[ended, :k], ids[ended, :k]
        rows, width = rows[~ended], 2 * width
    if scores_out is None:                                  # no queries
        return search(queries, k)
    return scores_out, ids_out


def without_own(scores: np.ndarray, ids: np.ndarray, own_ids) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out on ranked rows (Q, n) -> (Q, n - 1): drop each row's own gallery id ``own_ids[q]``.

    A row that does not hold its own id drops its last entry instead, so every row keeps the same
    length.  For exact search this is scikit-learn's ``kneighbors(X=None)`` rule up to which tied
    item is kept: the query is missing only when n items score at least as high as the query
    itself, i.e. all n are exact duplicates of it with the same score (scikit-learn drops the first
    of them; the scores are the same).  For an approximate index the query may simply have been
    missed, and then the first entries are real results that must stay.
    """
    own_ids = np.asarray(own_ids, dtype=np.int64).reshape(-1, 1)
    keep = ids != own_ids
    keep[keep.all(axis=1), -1] = False
    shape = (len(ids), ids.shape[1] - 1)
    return np.asarray(scores)[keep].reshape(shape), ids[keep].reshape(shape)


def search_leaving_out(search, queries: np.ndarray, k: int, own_ids) -> tuple[np.ndarray, np.ndarray]:
    """``search(queries, k)``, or with ``own_ids`` one more result searched and :func:`without_own` applied."""
    if own_ids is None:
        return search(queries, k)
    own_ids = np.asarray(own_ids, dtype=np.int64)
    if own_ids.shape != (len(queries),):
        raise CbirError(f"own_ids must hold one gallery id per query ({len(queries)}); got shape {own_ids.shape}")
    scores, ids = search(queries, k + 1)
    return without_own(scores, ids, own_ids)


class ExactIndex:
    """Brute-force search with faiss ``IndexFlatIP`` (``metric="ip"``) or ``IndexFlatL2``.

    ``scores`` are inner products for ``ip`` (higher is better) and squared L2 distances
    for ``l2`` (lower is better), as faiss returns them.
    """

    def __init__(self, metric: str = "ip"):
        if metric not in METRICS:
            raise CbirError(f"metric must be one of {METRICS}; got {metric!r}")
        self.metric = metric
        self.index_: faiss.Index | None = None

    def fit(self, gallery) -> "ExactIndex":
        gallery = as_float32_matrix(gallery, "gallery")
        d = gallery.shape[1]
        self.index_ = faiss.IndexFlatIP(d) if self.metric == "ip" else faiss.IndexFlatL2(d)
        self.index_.add(gallery)
        return self

    @property
    def ntotal(self) -> int:
        return 0 if self.index_ is None else self.index_.ntotal

    def search(self, queries, k: int, own_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` (Q, k), best first; ``own_ids``: leave-one-out (module docstring)."""
        return search_leaving_out(self._search, queries, k, own_ids)

    def _search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index_ is None:
            raise CbirError("search() called before fit(gallery)")
        queries = as_float32_matrix(queries, "queries")
        if queries.shape[1] != self.index_.d:
            raise CbirError(f"queries have dimension {queries.shape[1]} but the gallery has {self.index_.d}; "
                            "extract both with the same model")
        return search_ties_at_cut(self.index_.search, queries, k, self.ntotal, higher_is_better=self.metric == "ip")


def numpy_search(queries, gallery, k: int, metric: str = "ip", own_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Reference exact search in numpy: full similarity matrix, stable sort (ties -> lower id).

    ``own_ids``: leave-one-out, as every index's search (:func:`without_own`).
    """
    return search_leaving_out(lambda q, n: _numpy_search(q, gallery, n, metric), queries, k, own_ids)


def _numpy_search(queries, gallery, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    queries = as_float32_matrix(queries, "queries")
    gallery = as_float32_matrix(gallery, "gallery")
    k = check_k(k, len(gallery))
    if metric == "ip":
        sim = queries @ gallery.T
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sim, order, axis=1), order
    if metric == "l2":
        dist = (queries ** 2).sum(1)[:, None] - 2 * queries @ gallery.T + (gallery ** 2).sum(1)[None, :]
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, axis=1), order
    raise CbirError(f"metric must be one of {METRICS}; got {metric!r}")
