"""Stage 3, index: binary hash codes, Hamming search, and hash shortlist then float re-rank (notebook 04).

Code makers (scikit-learn style: hyper-parameters in ``__init__``, ``fit`` learns, learned
state ends in ``_``, ``transform`` returns codes packed 8 bits to a uint8 byte):

``LSHHasher``  random-projection sign hashing: b(x) = sign((x - mu) W), W ~ N(0, 1)^(D x bits).
               (Charikar's SimHash; centring on the gallery mean ``mu`` keeps the planes
               through the data's centre, ``center=False`` gives the textbook form.)
``PCAHasher``  b(x) = sign((x - mu) P), P = the top ``bits`` principal directions.
``ITQHasher``  Iterative Quantisation (Gong & Lazebnik, CVPR 2011): V = (x - mu) P as in PCA,
               then an orthogonal rotation R minimising the quantisation loss
               ||B - V R||_F^2 with B = sign(V R), by alternating
                 B <- sign(V R)                      (fix R)
                 S Omega S_hat^T = SVD(B^T V),  R <- S_hat S^T   (fix B: orthogonal Procrustes)
               b(x) = sign((x - mu) P R).

Bit value 1 means a positive projection.  The Hamming distance of two codes is the number
of differing bits, popcount(a XOR b), summed over the bytes.

``HashIndex`` shortlists the ``m`` gallery codes nearest to the query's code (faiss
``IndexBinaryFlat``), re-ranks those ``m`` by the float inner product, and returns the top
k.  ``m`` defaults to 2k.  Codes that tie at the m-th Hamming distance enter the shortlist by the
lower gallery id (the tie rule of :mod:`cbir_kit.index.exact`), so the shortlist is the first m of
``numpy.argsort(hamming, kind="stable")`` and the same command prints the same numbers anywhere.  The shortlist's quality is

    shortlist recall@k = (1 / Q) * sum_q |shortlist_m(q) ∩ Exact_k(q)| / k,

the fraction of the exact top-k that survives the shortlist (the re-rank then recovers
their exact order, so the final top-k equals the exact top-k when this is 1).
"""
from __future__ import annotations

import time

import faiss
import numpy as np
import scipy.linalg

from ..errors import CbirError
from ..evaluation.metrics import overlap_with_exact
from ..method_specs import parse_method
from .exact import as_float32_matrix, check_k, search_leaving_out, search_ties_at_cut, ties_by_id, without_own

# popcount of every byte value, for the numpy reference
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


def check_bits(bits: int) -> int:
    if not isinstance(bits, (int, np.integer)) or bits < 8 or bits % 8:
        raise CbirError(f"the number of hash bits must be a positive multiple of 8 (8, 16, ..., 64, ...); got {bits!r}")
    return int(bits)


class _SignHasher:
    """Shared machinery: codes = packbits(projection(x) > 0)."""

    bits: int  # subclasses define fit() and _project(x), the real-valued projection to sign

    def _check_fitted(self, x: np.ndarray) -> None:
        if getattr(self, "mean_", None) is None:
            raise CbirError(f"{type(self).__name__} is not fitted: call fit(gallery) before transform()")
        if x.shape[1] != self.mean_.shape[0]:
            raise CbirError(f"{type(self).__name__} was fitted on {self.mean_.shape[0]}-d features but got "
                            f"{x.shape[1]}-d ones; use features of the same model")

    def transform_bits(self, x) -> np.ndarray:
        """Unpacked codes, (N, bits) of 0/1 uint8."""
        x = as_float32_matrix(x, "features")
        self._check_fitted(x)
        return (self._project(x) > 0).astype(np.uint8)

    def transform(self, x) -> np.ndarray:
        """Packed codes, (N, bits / 8) uint8, bit j of the code is byte j // 8, bit 7 - j % 8."""
        return np.packbits(self.transform_bits(x), axis=1)

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).transform(x)


def _pca_directions(x: np.ndarray, bits: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top ``bits`` principal directions (D, bits) of ``x``."""
    n, d = x.shape
    if bits > d:
        raise CbirError(f"{name} with {bits} bits needs features of at least {bits} dimensions; got {d}. "
                        "Use fewer bits or LSH (which allows any number)")
    if n < 2:
        raise CbirError(f"{name} needs at least 2 gallery vectors to fit; got {n}")
    mean = x.mean(axis=0, dtype=np.float64)
    centred = x - mean
    cov = (centred.T @ centred / (n - 1)).astype(np.float64)
    # only the top `bits` eigenpairs are computed (ascending order), a few times faster than all d
    _, eigvec = scipy.linalg.eigh(cov, subset_by_index=[d - bits, d - 1])
    return mean.astype(np.float32), eigvec[:, ::-1].astype(np.float32)


class LSHHasher(_SignHasher):
    """Random-projection sign hashing (see the module docstring); ``seed`` fixes W."""

    def __init__(self, bits: int = 64, center: bool = True, seed: int = 0):
        self.bits = check_bits(bits)
        self.center = center
        self.seed = seed

    def fit(self, x) -> "LSHHasher":
        x = as_float32_matrix(x, "gallery")
        d = x.shape[1]
        self.mean_ = x.mean(axis=0) if self.center else np.zeros(d, np.float32)
        self.projection_ = np.random.default_rng(self.seed).standard_normal((d, self.bits)).astype(np.float32)
        return self

    def _project(self, x):
        return (x - self.mean_) @ self.projection_


class PCAHasher(_SignHasher):
    """Sign of the top-``bits`` principal components."""

    def __init__(self, bits: int = 64):
        self.bits = check_bits(bits)

    def fit(self, x) -> "PCAHasher":
        x = as_float32_matrix(x, "gallery")
        self.mean_, self.projection_ = _pca_directions(x, self.bits, "PCA hashing")
        return self

    def _project(self, x):
        return (x - self.mean_) @ self.projection_


class ITQHasher(_SignHasher):
    """Iterative Quantisation: PCA, then ``n_iter`` alternating rotation updates."""

    def __init__(self, bits: int = 64, n_iter: int = 50, seed: int = 0):
        self.bits = check_bits(bits)
        self.n_iter = n_iter
        self.seed = seed

    def fit(self, x) -> "ITQHasher":
        x = as_float32_matrix(x, "gallery")
        self.mean_, pca = _pca_directions(x, self.bits, "ITQ")
        v = ((x - self.mean_) @ pca).astype(np.float64)
        # random orthogonal start: Q of the QR factorisation of a Gaussian matrix
        rotation, _ = np.linalg.qr(np.random.default_rng(self.seed).standard_normal((self.bits, self.bits)))
        self.loss_ = []
        for _ in range(self.n_iter):
            b = np.where(v @ rotation >= 0, 1.0, -1.0)
            s, _, s_hat_t = np.linalg.svd(b.T @ v)
            rotation = s_hat_t.T @ s.T
            self.loss_.append(float(np.sum((np.where(v @ rotation >= 0, 1.0, -1.0) - v @ rotation) ** 2)))
        self.rotation_ = rotation.astype(np.float32)
        self.projection_ = pca @ self.rotation_
        return self

    def _project(self, x):
        return (x - self.mean_) @ self.projection_


HASHERS = {"lsh": LSHHasher, "pca": PCAHasher, "itq": ITQHasher}


def make_hasher(spec: str, seed: int = 0) -> _SignHasher:
    """``"itq:64"``, ``"lsh:128"``, ``"pca:32"`` (:func:`cbir_kit.method_specs.parse_method`) -> an unfitted code maker."""
    parsed = parse_method("hash", spec)
    bits = check_bits(parsed.bits)
    return PCAHasher(bits) if parsed.method == "pca" else HASHERS[parsed.method](bits, seed=seed)


def _check_codes(codes, name: str) -> np.ndarray:
    codes = np.ascontiguousarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise CbirError(f"{name} must be packed codes, a 2-D uint8 array (N, bits / 8); got "
                        f"{codes.dtype} with shape {codes.shape}")
    return codes


def hamming_distances(query_codes, gallery_codes) -> np.ndarray:
    """Numpy reference: (Q, G) Hamming distances = sum over bytes of popcount(q XOR g)."""
    q = _check_codes(query_codes, "query codes")
    g = _check_codes(gallery_codes, "gallery codes")
    return _POPCOUNT[q[:, None, :] ^ g[None, :, :]].sum(axis=2)


def hamming_search_numpy(query_codes, gallery_codes, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference k-nearest codes: ``(distances, ids)``, ties broken by the lower id."""
    dist = hamming_distances(query_codes, gallery_codes)
    k = check_k(k, dist.shape[1])
    ids = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, ids, axis=1), ids


def hamming_search_faiss(query_codes, gallery_codes, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-nearest codes with faiss ``IndexBinaryFlat``: ``(distances int32, ids)``, ties by the lower id."""
    g = _check_codes(gallery_codes, "gallery codes")
    q = _check_codes(query_codes, "query codes")
    if q.shape[1] != g.shape[1]:
        raise CbirError(f"query codes have {8 * q.shape[1]} bits but gallery codes {8 * g.shape[1]}")
    index = faiss.IndexBinaryFlat(8 * g.shape[1])
    index.add(g)
    return search_ties_at_cut(index.search, q, k, len(g), higher_is_better=False)


def shortlist_recall(shortlist_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |shortlist ∩ exact top-k| / k (``exact_ids`` is (Q, k))."""
    return overlap_with_exact(shortlist_ids, exact_ids)


def rerank_inner_product(queries: np.ndarray, gallery: np.ndarray, shortlist: np.ndarray,
                         k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each query's shortlist by inner product q . g: ``(scores, ids)`` (Q, k), best first.

    faiss ``knn_inner_products_by_idx`` reads the shortlisted rows in place (no (Q, m, D)
    gathered copy), about 3x faster than gathering and multiplying in numpy.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    shortlist = np.ascontiguousarray(shortlist, dtype=np.int64)
    nq, m = shortlist.shape
    scores = np.empty((nq, k), dtype=np.float32)
    ids = np.empty((nq, k), dtype=np.int64)
    faiss.knn_inner_products_by_idx(faiss.swig_ptr(queries), faiss.swig_ptr(gallery), faiss.swig_ptr(shortlist),
                                    gallery.shape[1], nq, len(gallery), m, k, faiss.swig_ptr(scores),
                                    faiss.swig_ptr(ids), m)
    return scores, ids


class HashIndex:
    """Hash shortlist, then float re-rank (see the module docstring).

    ``fit(gallery)`` fits ``hasher`` on the gallery (unless already fitted), codes it and
    keeps the float vectors.  ``search(queries, k)`` returns the top-k of the ``m``-item
    shortlist (``m`` = ``shortlist`` if set, else 2k) re-ranked by inner product; it
    records the last search's ``shortlist_`` ids and per-stage ``timings_``
    (``encode_s``, ``hamming_s``, ``rerank_s``).
    """

    def __init__(self, hasher: _SignHasher, shortlist: int | None = None):
        if shortlist is not None and shortlist < 1:
            raise CbirError(f"shortlist={shortlist} must be at least 1")
        self.hasher = hasher
        self.shortlist = shortlist

    def fit(self, gallery) -> "HashIndex":
        gallery = as_float32_matrix(gallery, "gallery")
        t0 = time.perf_counter()
        if getattr(self.hasher, "mean_", None) is None:
            self.hasher.fit(gallery)
        self.fit_s_ = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.codes_ = self.hasher.transform(gallery)
        self.binary_index_ = faiss.IndexBinaryFlat(self.hasher.bits)
        # counting by distance instead of a k-heap: at 1M 128-bit codes a 5,000-code shortlist
        # takes 1.7 ms per query instead of 3.9 ms (measured), and never slower for small m
        self.binary_index_.use_heap = False
        self.binary_index_.add(self.codes_)
        self.encode_gallery_s_ = time.perf_counter() - t0
        self.gallery_ = gallery
        return self

    @property
    def ntotal(self) -> int:
        return len(getattr(self, "gallery_", ()))

    def shortlist_size(self, k: int) -> int:
        return min(self.shortlist if self.shortlist is not None else 2 * k, self.ntotal)

    def search(self, queries, k: int, own_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` (Q, min(k, m)), best first by inner product.

        ``own_ids``: leave-one-out (:func:`cbir_kit.index.exact.without_own`), applied to the
        recorded ``shortlist_`` too.
        """
        scores, ids = search_leaving_out(self._search, queries, k, own_ids)
        if own_ids is not None:
            self.shortlist_ = without_own(self.shortlist_, self.shortlist_, own_ids)[1]
        return scores, ids

    def _search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "gallery_"):
            raise CbirError("HashIndex was searched before fit(gallery)")
        queries = as_float32_matrix(queries, "queries")
        k = check_k(k, self.ntotal)
        m = self.shortlist_size(k)
        t0 = time.perf_counter()
        codes = self.hasher.transform(queries)
        t1 = time.perf_counter()
        _, short = search_ties_at_cut(self.binary_index_.search, codes, m, self.ntotal, higher_is_better=False)
        t2 = time.perf_counter()
        # the whole shortlist re-ranked, so that a cut through tied inner products keeps the lower ids
        out_scores, out_ids = ties_by_id(*rerank_inner_product(queries, self.gallery_, short, m))
        out_scores, out_ids = out_scores[:, :min(k, m)], out_ids[:, :min(k, m)]
        t3 = time.perf_counter()
        self.shortlist_ = short
        self.timings_ = {"encode_s": t1 - t0, "hamming_s": t2 - t1, "rerank_s": t3 - t2}
        return out_scores, out_ids
