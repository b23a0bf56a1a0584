"""Stage 3, index: retrieval with the binary-hash project's codes and semantic embeddings (notebook 04).

Codes here are unpacked 0/1 arrays (N, B) as :meth:`TrainedHead.codes` gives them; they are
packed to bytes for :mod:`cbir_kit.index.hashing`, which computes the Hamming distances
d_H(a, b) = popcount(a XOR b) and the shortlist recall.

* "Algo 2": L2-normalise the semantic embeddings, score = e_q . e_g (one matrix product), top k.
* "Algo 2 + hashes": shortlist the ``shortlist`` gallery items nearest in Hamming distance
  (default 2k; ties go to the lower gallery id), then Algo 2 on the shortlist only.
* :func:`shortlist_recall_at_k`: the share of the exact top k by cosine of *float features*
  (the same frozen features for every code maker being compared) that lies inside the 2k
  codes nearest in Hamming distance (ties -> lower gallery id), averaged over queries:
  (1 / Q) sum_q |Hamming_2k(q) ∩ Exact_k(q)| / k, as :func:`cbir_kit.index.hashing.shortlist_recall`.
  :func:`leave_one_out_shortlist_recall` is the same with queries drawn from the pool itself.
* :func:`hamming_recall_at_k`: R@k of the pure Hamming ranking, with ties at the k-th
  distance broken at random *in expectation*: if n_< items lie strictly closer than the k-th
  distance d_k and n_= lie at d_k, of which h_< and h_= are relevant, the expected hits are
  h_< + h_= (k - n_<) / n_=;  R@k = expected hits / R.  With 48-bit codes ties are common,
  and breaking them by gallery id would reward a gallery that happens to be sorted by class.
"""
from __future__ import annotations

import numpy as np

from ..errors import CbirError
from .hashing import hamming_distances, shortlist_recall


def unpacked_hamming_distances(query_codes, gallery_codes) -> np.ndarray:
    """All-pairs Hamming distances (Q, G) of unpacked 0/1 codes (Q, B) and (G, B).

    The codes are packed into bytes and handed to :func:`cbir_kit.index.hashing.hamming_distances`,
    the one implementation (which takes packed codes).
    """

    q, g = np.asarray(query_codes), np.asarray(gallery_codes)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise CbirError(f"codes must be (N, B) arrays of equal B; got {q.shape} and {g.shape}")
    return hamming_distances(np.packbits(q.astype(np.uint8), axis=1), np.packbits(g.astype(np.uint8), axis=1))


def algo2_search(query_emb, gallery_emb, k: int) -> tuple[np.ndarray, np.ndarray]:
    """"Algo 2": cosine scores of L2-normalised embeddings, top k (ties -> lower id)."""
    q = _normalise(query_emb)
    g = _normalise(gallery_emb)
    scores = q @ g.T
    k = min(int(k), g.shape[0])
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def algo2_hash_search(query_codes, gallery_codes, query_emb, gallery_emb, k: int,
                      shortlist: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """"Algo 2 + hashes": Hamming shortlist (default 2k), then Algo 2 within it; top k."""
    shortlist = 2 * k if shortlist is None else int(shortlist)
    if shortlist < k:
        raise CbirError(f"the Hamming shortlist ({shortlist}) must hold at least k = {k} items")
    dist = unpacked_hamming_distances(query_codes, gallery_codes)
    shortlist = min(shortlist, dist.shape[1])
    cand = np.argsort(dist, axis=1, kind="stable")[:, :shortlist]
    q = _normalise(query_emb)
    g = _normalise(gallery_emb)
    scores = np.einsum("qd,qsd->qs", q, g[cand])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, shortlist)]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(cand, order, axis=1)


def shortlist_recall_at_k(query_codes, gallery_codes, query_feats, gallery_feats, k: int = 10) -> float:
    """Share of the exact float top k inside the 2k nearest codes (module docstring)."""
    dist = unpacked_hamming_distances(query_codes, gallery_codes)
    shortlist = np.argsort(dist, axis=1, kind="stable")[:, :2 * k]
    return shortlist_recall(shortlist, algo2_search(query_feats, gallery_feats, k)[1])


def leave_one_out_shortlist_recall(codes, feats, rows, k: int = 10) -> float:
    """:func:`shortlist_recall_at_k` of pool items ``rows`` against the pool minus each query itself.

    The query's own entry is masked in the dense (Hamming and cosine) matrices rather than dropped
    by :func:`cbir_kit.index.exact.without_own`: many codes tie at Hamming distance 0, and the
    shortlist keeps the first 2k of the *others* in id order, as the hash project's code does.
    """
    rows = np.asarray(rows)
    dist = unpacked_hamming_distances(np.asarray(codes)[rows], codes).astype(np.float64)
    dist[np.arange(len(rows)), rows] = np.inf
    f = _normalise(feats)
    sim = f[rows] @ f.T
    sim[np.arange(len(rows)), rows] = -np.inf
    shortlist = np.argsort(dist, axis=1, kind="stable")[:, :2 * k]
    exact = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return shortlist_recall(shortlist, exact)


def hamming_recall_at_k(query_codes, gallery_codes, query_labels, gallery_labels, k: int = 10) -> float:
    """Mean over queries (with R > 0) of the tie-aware R@k of the Hamming ranking (module doc)."""
    dist = unpacked_hamming_distances(query_codes, gallery_codes)
    rel = np.asarray(query_labels)[:, None] == np.asarray(gallery_labels)[None, :]
    k = min(int(k), dist.shape[1])
    kth = np.sort(dist, axis=1)[:, k - 1:k]
    closer, tied = dist < kth, dist == kth
    n_closer = closer.sum(axis=1)
    hits = (rel & closer).sum(axis=1) + (rel & tied).sum(axis=1) * (k - n_closer) / tied.sum(axis=1)
    n_rel = rel.sum(axis=1)
    valid = n_rel > 0
    return float(np.mean(hits[valid] / n_rel[valid])) if valid.any() else float("nan")


def _normalise(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
