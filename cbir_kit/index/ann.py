"""Stage 3, index: approximate nearest-neighbour search from faiss ``index_factory`` strings (notebook 02).

One string names the index (faiss's own grammar):

``"Flat"``          exact brute force (the baseline);
``"IVF256,Flat"``   inverted file: k-means cuts the gallery into ``nlist`` = 256 cells, a query
                    scans only the ``nprobe`` cells whose centroids are closest to it;
``"HNSW32"``        hierarchical navigable small-world graph with 32 links per node; a query
                    walks the graph keeping a beam of ``efSearch`` candidates;
``"IVF256,PQ32"``   inverted file whose vectors are product-quantised to 32 bytes
                    (32 sub-vectors, each replaced by one of 256 learned centroids).

The metric is the inner product s(q, g) = q . g, the cosine similarity on the
L2-normalised features every extractor returns.  Indexes that learn something (IVF
centroids, PQ codebooks) are trained on the gallery itself.

How good an ANN result is gets measured against exact search on the same features:

    recall@k_vs_exact = (1 / Q) * sum_q |ANN_k(q) ∩ Exact_k(q)| / k

the fraction of the exact top-k that the ANN top-k also returns (1.0 = no loss).
"""
from __future__ import annotations

import re
import time

import faiss
import numpy as np

from ..errors import CbirError
from ..evaluation.metrics import overlap_with_exact
from .exact import ExactIndex, as_float32_matrix, search_leaving_out, search_ties_at_cut


class AnnIndex:
    """A faiss index built from a factory string, searched by inner product.

    ``nprobe`` (IVF: cells scanned per query) and ``ef_search`` (HNSW: beam width) are the
    search-time knobs; ``None`` keeps faiss's default (nprobe 1, efSearch 16).
    ``train(gallery)`` learns what the index needs (a no-op for Flat and HNSW),
    ``add(gallery)`` stores the vectors, ``fit(gallery)`` does both.
    """

    def __init__(self, factory: str = "Flat", nprobe: int | None = None, ef_search: int | None = None):
        self.factory = factory
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.index_: faiss.Index | None = None

    # -- building -----------------------------------------------------------------------
    def _create(self, d: int) -> faiss.Index:
        try:
            return faiss.index_factory(d, self.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            raise CbirError(f"index={self.factory!r} is not a faiss index_factory string faiss accepts for "
                            f"{d}-d features ({first}); try 'Flat', 'IVF256,Flat', 'HNSW32' or 'IVF256,PQ32' "
                            f"(PQ<m> needs the dimension {d} to be a multiple of m)") from err

    def _check_trainable(self, index: faiss.Index, n: int) -> None:
        """Clear errors when the gallery is too small for the k-means the index needs."""
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and n < ivf.nlist:
            fewer = max(1, n // 39)
            raise CbirError(f"index={self.factory!r} needs at least {ivf.nlist} gallery vectors to train "
                            f"{ivf.nlist} inverted lists but the gallery has {n}; use fewer lists, e.g. "
                            f"'IVF{fewer},Flat' (faiss recommends at least 39 vectors per list)")
        m = re.search(r"PQ(\d+)(?:x(\d+))?", self.factory)
        if m:
            nbits = int(m.group(2) or 8)
            if n < 2 ** nbits:
                raise CbirError(f"index={self.factory!r}: product quantisation learns {2 ** nbits} centroids "
                                f"per sub-vector, but the gallery has only {n} vectors; use a Flat or HNSW "
                                f"index, or fewer bits per code (e.g. PQ{m.group(1)}x{max(1, int(np.log2(n)))})")

    def train(self, gallery) -> "AnnIndex":
        """Create the index and train it on ``gallery`` when it needs training."""
        gallery = as_float32_matrix(gallery, "gallery")
        index = self._create(gallery.shape[1])
        if not index.is_trained:
            self._check_trainable(index, len(gallery))
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None and hasattr(faiss.downcast_index(ivf), "do_polysemous_training"):
                # polysemous code re-ordering only serves Hamming-filtered PQ search, which is not
                # used here, and its annealing takes minutes: train the plain product quantiser.
                faiss.downcast_index(ivf).do_polysemous_training = False
            try:
                index.train(gallery)
            except RuntimeError as err:
                raise CbirError(f"training index={self.factory!r} on {len(gallery)} gallery vectors failed: "
                                f"{str(err).strip()}; use a smaller index (fewer lists or codes)") from err
        self.index_ = index
        self.apply_search_params()
        return self

    def add(self, gallery) -> "AnnIndex":
        """Add ``gallery`` vectors (ids 0..N-1 in order); the index must be trained."""
        if self.index_ is None or not self.index_.is_trained:
            raise CbirError(f"index {self.factory!r} is not trained: call train(gallery) or fit(gallery) "
                            "before add()")
        self.index_.add(as_float32_matrix(gallery, "gallery"))
        return self

    def fit(self, gallery) -> "AnnIndex":
        """Train (when needed) and add ``gallery``."""
        gallery = as_float32_matrix(gallery, "gallery")
        return self.train(gallery).add(gallery)

    def apply_search_params(self) -> None:
        space = faiss.ParameterSpace()
        for name, value, param in (("nprobe", self.nprobe, "nprobe"), ("efSearch", self.ef_search, "ef_search")):
            if value is None:
                continue
            if value < 1:
                raise CbirError(f"{param}={value!r} must be at least 1")
            try:
                space.set_index_parameter(self.index_, name, int(value))
            except RuntimeError as err:
                kind = "IVF" if name == "nprobe" else "HNSW"
                raise CbirError(f"{param}= applies to {kind} indexes only, not to index={self.factory!r}") from err

    # -- searching ----------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return 0 if self.index_ is None else self.index_.ntotal

    def search(self, queries, k: int, own_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of shape (Q, k), best first; id -1 where the index found fewer than k.

        ``own_ids``: leave-one-out (:func:`cbir_kit.index.exact.without_own`)."""
        return search_leaving_out(self._search, queries, k, own_ids)

    def _search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index_ is None or not self.index_.is_trained:
            raise CbirError(f"index {self.factory!r} was searched before it was trained: call fit(gallery) first")
        if self.ntotal == 0:
            raise CbirError(f"index {self.factory!r} is empty: call fit(gallery) (or add(gallery)) first")
        queries = as_float32_matrix(queries, "queries")
        if queries.shape[1] != self.index_.d:
            raise CbirError(f"queries have dimension {queries.shape[1]} but the gallery has {self.index_.d}; "
                            "extract both with the same model")
        return search_ties_at_cut(self.index_.search, queries, k, self.ntotal)


def recall_vs_exact(ann_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """recall@k_vs_exact = mean over queries of |ANN top-k ∩ exact top-k| / k (ids -1 ignored)."""
    return overlap_with_exact(np.asarray(ann_ids)[:, :k], np.asarray(exact_ids)[:, :k])


def compare_to_exact(index: AnnIndex, queries, gallery, k: int = 10) -> dict:
    """Build ``index`` on ``gallery`` and measure it against exact search.

    Returns ``build_s``, ``search_ms_per_query`` of the ANN index and of exact Flat search,
    and ``recall@k_vs_exact``.
    """
    t0 = time.perf_counter()
    index.fit(gallery)
    build_s = time.perf_counter() - t0
    exact = ExactIndex("ip").fit(gallery)
    t0 = time.perf_counter()
    _, exact_ids = exact.search(queries, k)
    exact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, ann_ids = index.search(queries, k)
    ann_s = time.perf_counter() - t0
    n = len(exact_ids)
    return {"index": index.factory, "build_s": build_s, "search_ms_per_query": 1000 * ann_s / n,
            "exact_search_ms_per_query": 1000 * exact_s / n,
            f"recall@{exact_ids.shape[1]}_vs_exact": recall_vs_exact(ann_ids, exact_ids, k)}
