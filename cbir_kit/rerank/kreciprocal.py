"""Stage 4, rerank: k-reciprocal re-ranking (Zhong, Zheng, Cao & Li, CVPR 2017), as published (notebook 07).

Inputs are distance matrices between queries (Q) and gallery (G): query-gallery d_qg (Q, G),
query-query d_qq (Q, Q) and gallery-gallery d_gg (G, G); N = Q + G items in all.

1. Stack the N x N matrix [[d_qq, d_qg], [d_qg^T, d_gg]], square it, divide each column by
   its maximum and transpose: d(i, j) = D(j, i)^2 / max_l D(l, i)^2 (the matrix is symmetric,
   so row i is row i of D^2 divided by its own maximum).  Rank each row (i itself first).
2. k-reciprocal set R(i, k1) = {j in N(i, k1 + 1) : i in N(j, k1 + 1)}, N(i, k) = the first
   k items of i's ranking.
3. Expansion: for each c in R(i, k1), if |R(c, round(k1/2)) ∩ R(i, k1)| > 2/3 |R(c, round(k1/2))|
   then R*(i) gets R(c, round(k1/2)) too.
4. V_i[j] = exp(-d(i, j)) / sum_{l in R*(i)} exp(-d(i, l)) for j in R*(i), 0 elsewhere.
5. Local query expansion (k2 > 1): V_i <- mean of V_j over j in N(i, k2).
6. Jaccard distance d_J(i, j) = 1 - sum_l min(V_i[l], V_j[l]) / sum_l max(V_i[l], V_j[l]);
   every V row sums to 1, so sum max = 2 - sum min.
7. final(i, j) = (1 - lambda) d_J(i, j) + lambda d(i, j), query rows, gallery columns.

Defaults k1 = 20, k2 = 6, lambda = 0.3.  Ranks use a stable sort (ties: lower index first).

:func:`k_reciprocal_rerank` takes the three dense matrices.  :func:`k_reciprocal_rerank_features`
is the memory-aware path: it computes blocks of rows of the distance matrix from the features
on demand, keeps only each row's first neighbours and the sparse V, so it never holds the
N x N matrix (memory ~ N * (k1 + expansion) plus the Q x G result) and gives the same result.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import sparse

from ..errors import CbirError

RowBlock = Callable[[int, int], np.ndarray]  # (start, stop) -> rows start..stop-1 of an N x N matrix


def _check_params(k1: int, k2: int, lambda_value: float, n: int) -> None:
    if k1 < 1 or k2 < 1:
        raise CbirError(f"k-reciprocal re-ranking needs k1 >= 1 and k2 >= 1; got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise CbirError(f"k-reciprocal lambda must lie in [0, 1]; got {lambda_value}")
    if n < max(k1, k2) + 1:
        raise CbirError(f"k-reciprocal re-ranking with k1={k1}, k2={k2} needs more than {max(k1, k2)} "
                        f"queries + gallery items; got {n}. Lower k1 and k2")


def _normalised_rows(block: RowBlock) -> RowBlock:
    """Step 1 for a symmetric D given by row blocks: d(i, j) = D(i, j)^2 / max_l D(i, l)^2."""
    def rows(start: int, stop: int) -> np.ndarray:
        d2 = np.square(np.asarray(block(start, stop), dtype=np.float32))
        return d2 / d2.max(axis=1, keepdims=True)

    return rows


def _first_neighbours(d_rows: np.ndarray, depth: int) -> np.ndarray:
    """The first ``depth`` columns of each row's stable ascending ranking."""
    part = np.argpartition(d_rows, depth - 1, axis=1)[:, :depth] if depth < d_rows.shape[1] else \
        np.tile(np.arange(d_rows.shape[1]), (len(d_rows), 1))
    vals = np.take_along_axis(d_rows, part, axis=1)
    # stable order: by distance, then by index (what a stable full sort gives)
    order = np.lexsort((part, vals), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    # argpartition may cut a tie at the boundary arbitrarily; repair rows where that matters
    kth = np.take_along_axis(d_rows, top[:, -1:], axis=1)
    tied = (d_rows == kth).sum(axis=1) > (np.take_along_axis(d_rows, top, axis=1) == kth).sum(axis=1)
    for r in np.flatnonzero(tied):
        top[r] = np.argsort(d_rows[r], kind="stable")[:depth]
    return top


def reciprocal_neighbours(ranks: np.ndarray, i: int, k: int) -> np.ndarray:
    """R(i, k) = {j in N(i, k + 1) : i in N(j, k + 1)}, in the order of N(i, k + 1) (notebook 07)."""
    forward = ranks[i, :k + 1]
    return forward[(ranks[forward, :k + 1] == i).any(axis=1)]


def _expanded_set(ranks: np.ndarray, i: int, k1: int) -> np.ndarray:
    """R*(i) of steps 2-3."""
    core = reciprocal_neighbours(ranks, i, k1)
    half = int(np.around(k1 / 2.0))
    parts = [core]
    for c in core:
        cand = reciprocal_neighbours(ranks, c, half)
        if len(np.intersect1d(cand, core)) > 2.0 / 3.0 * len(cand):
            parts.append(cand)
    return np.unique(np.concatenate(parts))


def _rerank(dist: RowBlock, n_query: int, n_total: int, k1: int, k2: int, lambda_value: float,
            chunk: int) -> np.ndarray:
    _check_params(k1, k2, lambda_value, n_total)
    depth = max(k1 + 1, k2)
    # pass 1: each row's first neighbours (steps 1-2)
    ranks = np.empty((n_total, depth), dtype=np.int64)
    for s in range(0, n_total, chunk):
        e = min(s + chunk, n_total)
        ranks[s:e] = _first_neighbours(dist(s, e), depth)
    # pass 2: expanded sets and their Gaussian-kernel weights (steps 3-4), sparse V
    indptr, indices, values = [0], [], []
    for s in range(0, n_total, chunk):
        e = min(s + chunk, n_total)
        d_rows = dist(s, e)
        for i in range(s, e):
            members = _expanded_set(ranks, i, k1)
            w = np.exp(-d_rows[i - s, members])
            indices.append(members)
            values.append((w / w.sum()).astype(np.float32))
            indptr.append(indptr[-1] + len(members))
    v = sparse.csr_matrix((np.concatenate(values), np.concatenate(indices), np.array(indptr)),
                          shape=(n_total, n_total), dtype=np.float32)
    # step 5: local query expansion, V <- A V with A[i, N(i, k2)] = 1 / k2
    if k2 != 1:
        rows = np.repeat(np.arange(n_total), k2)
        a = sparse.csr_matrix((np.full(n_total * k2, 1.0 / k2, np.float32), (rows, ranks[:, :k2].ravel())),
                              shape=(n_total, n_total))
        v = (a @ v).tocsr()
    # step 6: sum_l min(V_q[l], V_j[l]) for query rows q, through the columns l where V_q > 0
    v_cols = v.tocsc()
    out = np.empty((n_query, n_total - n_query), dtype=np.float32)
    for s in range(0, n_query, chunk):
        e = min(s + chunk, n_query)
        d_rows = dist(s, e)
        for q in range(s, e):
            row = v.getrow(q)
            sub = v_cols[:, row.indices]
            sub.data = np.minimum(sub.data, np.repeat(row.data, np.diff(sub.indptr)))
            shared = np.asarray(sub.sum(axis=1)).ravel()[n_query:].astype(np.float32)
            jaccard = 1.0 - shared / (2.0 - shared)
            out[q] = jaccard * (1 - lambda_value) + d_rows[q - s, n_query:] * lambda_value  # step 7
    return out


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked (Q, G) distances from dense distance matrices (lower = more similar)."""
    q_g = np.asarray(q_g_dist, dtype=np.float32)
    q_q = np.asarray(q_q_dist, dtype=np.float32)
    g_g = np.asarray(g_g_dist, dtype=np.float32)
    n_q, n_g = q_g.shape
    if q_q.shape != (n_q, n_q) or g_g.shape != (n_g, n_g):
        raise CbirError(f"k-reciprocal needs q_g (Q, G), q_q (Q, Q), g_g (G, G); got {q_g.shape}, "
                        f"{q_q.shape}, {g_g.shape}")
    full = np.square(np.block([[q_q, q_g], [q_g.T, g_g]]))
    full = (full / full.max(axis=0)).T  # step 1 exactly as stated: column maxima, then transpose
    return _rerank(lambda s, e: full[s:e], n_q, n_q + n_g, k1, k2, lambda_value, chunk=len(full))


def euclidean_rows(features: np.ndarray) -> RowBlock:
    """Row blocks of the Euclidean distance matrix of ``features`` (N, D), computed on demand:
    D(i, j) = sqrt(max(0, |x_i|^2 + |x_j|^2 - 2 x_i . x_j))."""
    x = np.asarray(features, dtype=np.float32)
    sq = np.einsum("nd,nd->n", x, x)

    def block(start: int, stop: int) -> np.ndarray:
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * (x[start:stop] @ x.T)
        return np.sqrt(np.maximum(d2, 0.0))

    return block


def euclidean_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense Euclidean distances between the rows of ``a`` and ``b`` (same formula as above)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    d2 = np.einsum("nd,nd->n", a, a)[:, None] + np.einsum("nd,nd->n", b, b)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(d2, 0.0))


def k_reciprocal_rerank_features(query, gallery, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                                 chunk: int = 1024) -> np.ndarray:
    """Memory-aware re-ranking from features, Euclidean distances, ``chunk`` rows at a time.

    Equals ``k_reciprocal_rerank(dist(q, g), dist(q, q), dist(g, g))`` with the distances of
    :func:`euclidean_distances`, without holding any (Q + G)^2 matrix.
    """
    query = np.asarray(query, dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise CbirError(f"query {query.shape} and gallery {gallery.shape} must be (N, D) arrays of the same D")
    if chunk < 1:
        raise CbirError(f"chunk must be at least 1; got {chunk}")
    both = np.concatenate([query, gallery])
    return _rerank(_normalised_rows(euclidean_rows(both)), len(query), len(both), k1, k2, lambda_value, chunk)
