"""Stage 4, rerank: query expansion (QE) and database-side augmentation (DBA) on L2-normalised features (notebook 06).

For a vector x with neighbours x_1, ..., x_n (its top-n gallery items by inner product,
similarities s_i = x . x_i):

    x' = normalise( x + sum_{i=1..n} w_i x_i ),   w_i = max(s_i, 0)^alpha

* average QE (Chum et al., ICCV 2007): alpha = 0, every w_i = 1 -> the mean of the query and
  its top-n results;
* alpha-QE (Radenović, Tolias & Chum, TPAMI 2018): alpha > 0 down-weights weaker neighbours
  (alpha = 3 is common);
* DBA applies the same formula to every gallery vector with its own top-n gallery neighbours
  (itself excluded, so it is counted once, with weight 1) before the index is built.

After QE the gallery is searched again with x'.  normalise(v) = v / ||v||_2.
"""
from __future__ import annotations

import numpy as np

from ..errors import CbirError
from ..index.exact import ExactIndex, as_float32_matrix


def _check(n: int, alpha: float, what: str) -> None:
    if n < 1:
        raise CbirError(f"{what} needs n >= 1 neighbours; got {n}")
    if alpha < 0:
        raise CbirError(f"{what} needs alpha >= 0; got {alpha}")


def _expand(x: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float) -> np.ndarray:
    weights = np.maximum(sims, 0.0) ** alpha  # 0 ** 0 = 1: average QE keeps every neighbour
    out = x + np.einsum("qn,qnd->qd", weights, neighbours)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def query_expansion(queries, gallery, n: int = 5, alpha: float = 0.0,
                    index: ExactIndex | None = None) -> np.ndarray:
    """Expanded queries x' (see the module docstring); ``index`` re-uses a built exact index."""
    _check(n, alpha, "query expansion")
    queries = as_float32_matrix(queries, "queries")
    gallery = as_float32_matrix(gallery, "gallery")
    index = index or ExactIndex("ip").fit(gallery)
    sims, ids = index.search(queries, n)
    return _expand(queries, gallery[ids], sims, alpha)


def database_augmentation(gallery, n: int = 5, alpha: float = 0.0) -> np.ndarray:
    """DBA: every gallery vector expanded with its top-n other gallery vectors."""
    _check(n, alpha, "database-side augmentation")
    gallery = as_float32_matrix(gallery, "gallery")
    if n >= len(gallery):
        raise CbirError(f"database_augmentation with n={n} needs more than {n} gallery vectors; the gallery has {len(gallery)}")
    sims, ids = ExactIndex("ip").fit(gallery).search(gallery, n, own_ids=np.arange(len(gallery)))
    return _expand(gallery, gallery[ids], sims, alpha)
