"""The pipeline: the optional stages of ``evaluate()``, run on the features of one evaluation (notebooks 02-07).

The optional retrieval methods of ``cbir evaluate``, run on the features of one evaluation.

Order of the stages (each optional, each timed):

    TTA (re-extract queries / gallery) -> DBA (gallery) -> candidate index
    (exact Flat | ANN index | hash shortlist + float re-rank) -> QE (query, search again)
    -> k-reciprocal re-ranking (exact candidates only) -> threshold (calibrated on a seeded
    split of the queries, evaluated on the rest)

Truncated rankings (an IVF index finds only the items of the cells it probes; a hash
shortlist returns its m items): AP is computed over what is returned, and relevant items
never returned count as not found.  ``recall@k_vs_exact`` = mean over queries of
|top-k ∩ exact top-k| / k against exact Flat search on the original features.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..evaluation import metrics as M
from ..errors import CbirError
from ..index.exact import ExactIndex, without_own
from ..index.ann import AnnIndex, recall_vs_exact
from ..index.hashing import HashIndex, make_hasher, shortlist_recall
from ..rerank import database_augmentation, k_reciprocal_rerank_features, parse_qe, query_expansion
from ..threshold.rules import calibrate, calibration_split, retrieval_metrics


@dataclass
class Methods:
    """Which methods an evaluation uses (the ``cbir evaluate`` flags)."""

    index: str = "Flat"
    nprobe: int | None = None
    ef_search: int | None = None
    hash: str | None = None
    shortlist: int | None = None
    rerank: str | None = None
    qe: str | None = None
    dba: int | None = None
    tta: str | None = None
    tta_gallery: bool = False
    threshold: str | None = None
    calibration_fraction: float = 0.5

    def active(self) -> bool:
        return self != Methods()

    def check(self) -> None:
        """Clear errors for combinations that make no sense, before any work is done."""
        if self.hash and self.index != "Flat":
            raise CbirError("--hash builds its own index (hash shortlist + float re-rank); drop --index")
        if self.shortlist is not None and not self.hash:
            raise CbirError("--shortlist needs --hash (e.g. --hash itq:64 --shortlist 200)")
        if self.rerank not in (None, "kreciprocal"):
            raise CbirError(f"--rerank {self.rerank!r}: the only re-ranking is kreciprocal")
        if self.rerank and (self.hash or self.index != "Flat"):
            raise CbirError("--rerank kreciprocal re-ranks the whole gallery; use it with the exact index "
                            "(no --index / --hash)")
        if self.threshold not in (None, "static", "dynamic"):
            raise CbirError(f"--threshold must be static or dynamic; got {self.threshold!r}")
        if self.tta_gallery and not self.tta:
            raise CbirError("--tta-gallery needs --tta flip|ms|flip+ms")
        if self.qe:
            parse_qe(self.qe)
        if self.hash:
            make_hasher(self.hash)


def _ranking_metrics(ids: np.ndarray, ds, k: int) -> tuple[dict, np.ndarray]:
    n_relevant = ds.n_relevant()
    rel = M.relevance_matrix(ids, ds.query_labels, ds.gallery_labels)
    if rel.shape[1] < 10:  # P@10 needs 10 columns: missing ranks are not relevant
        rel = np.pad(rel, ((0, 0), (0, 10 - rel.shape[1])))
    out = M.topk_metrics(rel, n_relevant, k)
    ap = M.average_precisions(rel, n_relevant)
    out["mAP"] = float(np.nanmean(ap))
    return out, ap


def _as_distances(ids: np.ndarray, dist_rows: np.ndarray, n_gallery: int) -> np.ndarray:
    """(Q, G) distances: returned items get theirs, never-returned items +inf."""
    full = np.full((len(ids), n_gallery), np.inf)
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])
    valid = ids.ravel() >= 0
    full[rows[valid], ids.ravel()[valid]] = dist_rows.ravel()[valid]
    return full


def apply_methods(methods: Methods, queries: np.ndarray, gallery: np.ndarray, ds, k: int,
                  exact_metrics: dict, extractor=None, cache=None, progress: bool = False,
                  seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray, dict, dict]:
    """Run the configured stages; returns ``(metrics, per-query AP, top-k ids, timings, config)``."""
    methods.check()
    if ds.gnd is not None:
        raise CbirError("the retrieval-method flags need label ground truth; revisitop sets are evaluated "
                        "with the exact index only")
    timings, config = {}, {}
    n_gallery = len(gallery)
    loo = ds.leave_one_out
    own = np.arange(len(queries)) if loo else None   # leave-one-out: query i is gallery item i
    _, exact_top = ExactIndex("ip").fit(gallery).search(queries, k, own_ids=own)

    if methods.tta:
        from ..features.tta import TTAExtractor, parse_tta

        if extractor is None or cache is None:
            raise CbirError("--tta needs the extractor and the feature cache of the evaluation")
        flip, scales = parse_tta(methods.tta)
        tta = TTAExtractor(extractor.spec, flip=flip, scales=scales, device=str(extractor.device),
                           pretrained=extractor.pretrained, batch_size=extractor.batch_size,
                           num_workers=extractor.num_workers)
        t0 = time.perf_counter()
        queries = cache.get_or_extract(tta, ds.query, progress, desc="queries (TTA)")[0].vectors
        if methods.tta_gallery:
            gallery = queries if loo else cache.get_or_extract(tta, ds.gallery, progress, desc="gallery (TTA)")[0].vectors
        timings["tta_extract_s"] = time.perf_counter() - t0
        config["tta"] = {"views": methods.tta, "scales": list(scales), "flip": flip,
                         "gallery": methods.tta_gallery}

    if methods.dba:
        t0 = time.perf_counter()
        gallery = database_augmentation(gallery, methods.dba)
        timings["dba_s"] = time.perf_counter() - t0
        config["dba"] = {"n": methods.dba}

    # candidate index
    t0 = time.perf_counter()
    if methods.hash:
        index = HashIndex(make_hasher(methods.hash, seed=seed), shortlist=methods.shortlist).fit(gallery)
        shortlist = index.shortlist_size(k + (1 if loo else 0))
        depth = shortlist - (1 if loo else 0)
        config["hash"] = {"codes": methods.hash, "shortlist": shortlist, "default_shortlist": methods.shortlist is None}
    else:
        index = AnnIndex(methods.index, nprobe=methods.nprobe, ef_search=methods.ef_search).fit(gallery)
        depth = n_gallery - (1 if loo else 0)
    timings["index_build_s"] = time.perf_counter() - t0
    config["index"] = methods.index if not methods.hash else f"hash:{methods.hash}"
    if methods.nprobe is not None or methods.ef_search is not None:
        config["search_params"] = {"nprobe": methods.nprobe, "efSearch": methods.ef_search}

    if methods.qe:
        n, alpha = parse_qe(methods.qe)
        t0 = time.perf_counter()
        queries = query_expansion(queries, gallery, n=n, alpha=alpha, index=index)
        timings["qe_s"] = time.perf_counter() - t0
        config["qe"] = {"n": n, "alpha": alpha, "kind": "average" if alpha == 0 else "alpha"}

    t0 = time.perf_counter()
    index.search(queries, k, own_ids=own)
    timings["search_ms_per_query"] = 1000.0 * (time.perf_counter() - t0) / len(queries)
    if methods.hash:
        for name, value in index.timings_.items():
            timings[f"hash_{name[:-2]}_ms_per_query"] = 1000.0 * value / len(queries)
        timings["hash_fit_s"] = index.fit_s_
        timings["hash_encode_gallery_s"] = index.encode_gallery_s_
        short = index.shortlist_
    scores, ids = index.search(queries, depth, own_ids=own)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * scores.astype(np.float64), 0.0))  # Euclidean on unit vectors
    dist[ids < 0] = np.inf

    if methods.rerank:
        t0 = time.perf_counter()
        reranked = k_reciprocal_rerank_features(queries, gallery).astype(np.float64)
        timings["kreciprocal_s"] = time.perf_counter() - t0
        ids = np.argsort(reranked, axis=1, kind="stable")
        dist = np.take_along_axis(reranked, ids, axis=1)
        if loo:
            dist, ids = without_own(dist, ids, own)
        config["rerank"] = {"method": "kreciprocal", "k1": 20, "k2": 6, "lambda": 0.3}

    # what one query costs online: expansion, index search, re-ranking (TTA is extraction, not counted)
    timings["query_ms_per_query"] = timings["search_ms_per_query"] + 1000.0 * (
        timings.get("qe_s", 0.0) + timings.get("kreciprocal_s", 0.0)) / len(queries)
    out, ap = _ranking_metrics(ids, ds, k)
    out[f"recall@{k}_vs_exact"] = recall_vs_exact(ids, exact_top, k)
    if methods.hash:
        out[f"shortlist_recall@{k}"] = shortlist_recall(short, exact_top)

    if methods.threshold:
        full = _as_distances(ids, dist, n_gallery)   # under leave-one-out a query's own entry stays +inf
        relevant = ds.query_labels[:, None] == ds.gallery_labels[None, :]
        if loo:
            np.fill_diagonal(relevant, False)
        cal, ev = calibration_split(len(full), methods.calibration_fraction, seed=seed)
        t0 = time.perf_counter()
        fitted = calibrate(full[cal], relevant[cal], methods.threshold)
        timings["threshold_calibrate_s"] = time.perf_counter() - t0
        out.update(retrieval_metrics(fitted.retrieve(full[ev]), relevant[ev]))
        config["threshold"] = {**fitted.params(), "distance": "k-reciprocal" if methods.rerank else "Euclidean",
                               "n_calibration_queries": len(cal), "n_evaluation_queries": len(ev),
                               "calibration_fraction": methods.calibration_fraction,
                               "note": "precision/recall/f1 are over the evaluation queries only"}
    config["exact_metrics"] = exact_metrics
    return out, ap, ids[:, :k], timings, config
