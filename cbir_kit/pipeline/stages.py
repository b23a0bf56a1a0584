"""The pipeline: the optional stages of ``evaluate()``, run on the features of one evaluation (notebooks 02-07).

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
from dataclasses import dataclass, field

import numpy as np

from ..evaluation import metrics as M
from ..errors import CbirError
from ..index.exact import ExactIndex, without_own
from ..index.ann import recall_vs_exact
from ..index.hashing import shortlist_recall
from ..index.persist import IndexSpec
from ..method_specs import parse_method
from ..runtime import Runtime
from ..rerank import database_augmentation, k_reciprocal_rerank_features, query_expansion
from ..threshold.rules import calibrate, calibration_split


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

    def index_spec(self) -> IndexSpec:
        """The candidate index these methods name (checked on creation)."""
        return IndexSpec(self.index, nprobe=self.nprobe, ef_search=self.ef_search, hash=self.hash,
                         shortlist=self.shortlist)

    def check(self) -> None:
        """Clear errors for combinations that make no sense, before any work is done."""
        self.index_spec()
        if self.rerank not in (None, "kreciprocal"):
            raise CbirError(f"rerank={self.rerank!r}: the only re-ranking is 'kreciprocal'")
        if self.rerank and (self.hash or self.index != "Flat"):
            raise CbirError("rerank='kreciprocal' re-ranks the whole gallery; use it with the exact index "
                            "(no index= / hash=)")
        if self.threshold not in (None, "static", "dynamic"):
            raise CbirError(f"threshold={self.threshold!r} must be 'static' or 'dynamic'")
        if self.tta_gallery and not self.tta:
            raise CbirError("tta_gallery= needs tta= ('flip', 'ms' or 'flip+ms')")
        for option in ("qe", "tta"):
            if getattr(self, option):
                parse_method(option, getattr(self, option))


def _ranking_metrics(ids: np.ndarray, ds, k: int, no_relevant: str = "skip") -> tuple[dict, np.ndarray]:
    n_relevant = ds.n_relevant()
    rel = M.relevance_matrix(ids, ds.query_labels, ds.gallery_labels)
    if rel.shape[1] < 10:  # P@10 needs 10 columns: missing ranks are not relevant
        rel = np.pad(rel, ((0, 0), (0, 10 - rel.shape[1])))
    out = M.topk_metrics(rel, n_relevant, k, no_relevant)
    ap = M.average_precisions(rel, n_relevant)
    out.update({name: M.query_mean(v, n_relevant, no_relevant) for name, v in M.ranking_extras(rel, n_relevant, k).items()})
    return out, ap


def _as_distances(ids: np.ndarray, dist_rows: np.ndarray, n_gallery: int) -> np.ndarray:
    """(Q, G) distances: returned items get theirs, never-returned items +inf."""
    full = np.full((len(ids), n_gallery), np.inf)
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])
    valid = ids.ravel() >= 0
    full[rows[valid], ids.ravel()[valid]] = dist_rows.ravel()[valid]
    return full


@dataclass
class Run:
    """What the stages pass along: the current query and gallery vectors, and what they measured."""

    methods: Methods
    ds: object
    k: int
    queries: np.ndarray
    gallery: np.ndarray
    seed: int = 0
    no_relevant: str = "skip"
    timings: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    per_query_f1: tuple | None = None   # (evaluation query rows, their F1) when thresholded

    @property
    def own(self) -> np.ndarray | None:
        """Leave-one-out: query i is gallery item i, which the indexes never return (else None)."""
        return np.arange(len(self.queries)) if self.ds.leave_one_out else None

    def per_query_ms(self, seconds: float) -> float:
        return 1000.0 * seconds / len(self.queries)


def tta_stage(run: Run, extractor, cache, progress: bool) -> None:
    """Re-extract the queries (and with ``tta_gallery`` the gallery) as averages of augmented views."""
    from ..features.tta import TTAExtractor

    if extractor is None or cache is None:
        raise CbirError("tta= needs the extractor and the feature cache of the evaluation")
    views = parse_method("tta", run.methods.tta)
    tta = TTAExtractor(extractor, flip=views.flip, scales=views.scales)
    t0 = time.perf_counter()
    run.queries = cache.get_or_extract(tta, run.ds.query, progress, desc="queries (TTA)")[0].vectors
    if run.methods.tta_gallery:
        run.gallery = (run.queries if run.ds.leave_one_out else
                       cache.get_or_extract(tta, run.ds.gallery, progress, desc="gallery (TTA)")[0].vectors)
    run.timings["tta_extract_s"] = time.perf_counter() - t0
    run.config["tta"] = {"views": run.methods.tta, "scales": list(views.scales), "flip": views.flip,
                         "gallery": run.methods.tta_gallery}


def dba_stage(run: Run) -> None:
    """Database-side augmentation: every gallery vector averaged with its top-n gallery neighbours."""
    t0 = time.perf_counter()
    run.gallery = database_augmentation(run.gallery, run.methods.dba)
    run.timings["dba_s"] = time.perf_counter() - t0
    run.config["dba"] = {"n": run.methods.dba}


def index_stage(run: Run):
    """Build the candidate index: a faiss factory string, or a hash shortlist with a float re-rank.

    Returns ``(index, depth)``: ``depth`` results per query are ranked, the shortlist for a hash
    index and the whole gallery (less the query itself under leave-one-out) for the others.
    """
    m, loo = run.methods, int(run.ds.leave_one_out)
    t0 = time.perf_counter()
    index = m.index_spec().build(run.gallery, seed=run.seed)
    if m.hash:
        shortlist = index.shortlist_size(run.k + loo)
        depth = shortlist - loo
        run.config["hash"] = {"codes": m.hash, "shortlist": shortlist, "default_shortlist": m.shortlist is None}
    else:
        depth = len(run.gallery) - loo
    run.timings["index_build_s"] = time.perf_counter() - t0
    run.config["index"] = f"hash:{m.hash}" if m.hash else m.index
    if m.nprobe is not None or m.ef_search is not None:
        run.config["search_params"] = {"nprobe": m.nprobe, "efSearch": m.ef_search}
    return index, depth


def qe_stage(run: Run, index) -> None:
    """Query expansion: each query replaced by a weighted average with its top-n results."""
    qe = parse_method("qe", run.methods.qe)
    t0 = time.perf_counter()
    run.queries = query_expansion(run.queries, run.gallery, n=qe.n, alpha=qe.alpha, index=index)
    run.timings["qe_s"] = time.perf_counter() - t0
    run.config["qe"] = {"n": qe.n, "alpha": qe.alpha, "kind": "average" if qe.alpha == 0 else "alpha"}


def search_stage(run: Run, index, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Time a top-k search, then rank ``depth`` results: ``(ids, Euclidean distances, hash shortlist)``.

    On unit vectors the Euclidean distance is d = sqrt(2 - 2 s) for inner product s; items an
    index did not return (id -1) get d = inf.
    """
    t0 = time.perf_counter()
    index.search(run.queries, run.k, own_ids=run.own)
    run.timings["search_ms_per_query"] = run.per_query_ms(time.perf_counter() - t0)
    shortlist = None
    if run.methods.hash:
        for name, value in index.timings_.items():
            run.timings[f"hash_{name[:-2]}_ms_per_query"] = run.per_query_ms(value)
        run.timings["hash_fit_s"] = index.fit_s_
        run.timings["hash_encode_gallery_s"] = index.encode_gallery_s_
        shortlist = index.shortlist_
    scores, ids = index.search(run.queries, depth, own_ids=run.own)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * scores.astype(np.float64), 0.0))
    dist[ids < 0] = np.inf
    return ids, dist, shortlist


def rerank_stage(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking of the whole gallery (k1 20, k2 6, lambda 0.3): ``(ids, distances)``."""
    t0 = time.perf_counter()
    reranked = k_reciprocal_rerank_features(run.queries, run.gallery).astype(np.float64)
    run.timings["kreciprocal_s"] = time.perf_counter() - t0
    ids = np.argsort(reranked, axis=1, kind="stable")
    dist = np.take_along_axis(reranked, ids, axis=1)
    if run.own is not None:
        dist, ids = without_own(dist, ids, run.own)
    run.config["rerank"] = {"method": "kreciprocal", "k1": 20, "k2": 6, "lambda": 0.3}
    return ids, dist


def threshold_stage(run: Run, ids: np.ndarray, dist: np.ndarray) -> dict:
    """Calibrate a static or dynamic threshold on a seeded split of the queries; metrics of the rest."""
    m, ds = run.methods, run.ds
    full = _as_distances(ids, dist, len(run.gallery))   # under leave-one-out a query's own entry stays +inf
    relevant = ds.query_labels[:, None] == ds.gallery_labels[None, :]
    if ds.leave_one_out:
        np.fill_diagonal(relevant, False)
    cal, ev = calibration_split(len(full), m.calibration_fraction, seed=run.seed)
    t0 = time.perf_counter()
    fitted = calibrate(full[cal], relevant[cal], m.threshold)
    run.timings["threshold_calibrate_s"] = time.perf_counter() - t0
    run.config["threshold"] = {**fitted.params(), "distance": "k-reciprocal" if m.rerank else "Euclidean",
                               "n_calibration_queries": len(cal), "n_evaluation_queries": len(ev),
                               "calibration_fraction": m.calibration_fraction,
                               "note": "precision/recall/f1 are over the evaluation queries only"}
    retrieved, relevant = fitted.retrieve(full[ev]), relevant[ev]
    n_relevant = relevant.sum(axis=1)
    precision, recall, f1 = M.set_scores((retrieved & relevant).sum(axis=1), retrieved.sum(axis=1), n_relevant)
    run.per_query_f1 = (ev, f1)
    return {name: M.query_mean(values, n_relevant, run.no_relevant)
            for name, values in (("precision", precision), ("recall", recall), ("f1", f1))}


def apply_methods(methods: Methods, queries: np.ndarray, gallery: np.ndarray, ds, k: int,
                  exact_metrics: dict, extractor=None, cache=None, runtime: Runtime | None = None,
                  no_relevant: str = "skip") -> tuple[dict, np.ndarray, np.ndarray, dict, dict, tuple | None]:
    """Run the configured stages in the module docstring's order.

    Returns ``(metrics, per-query AP, top-k ids, timings, config, per-query F1)`` (the last is None
    without a threshold); ``recall@k_vs_exact`` compares
    the top k with exact search on the original features.
    """
    methods.check()
    if ds.gnd is not None:
        raise CbirError("the retrieval methods need label ground truth; revisitop sets are evaluated "
                        "with the exact index only")
    runtime = runtime or Runtime()
    run = Run(methods, ds, k, queries, gallery, runtime.seed, no_relevant)
    _, exact_top = ExactIndex("ip").fit(gallery).search(queries, k, own_ids=run.own)
    if methods.tta:
        tta_stage(run, extractor, cache, runtime.progress)
    if methods.dba:
        dba_stage(run)
    index, depth = index_stage(run)
    if methods.qe:
        qe_stage(run, index)
    ids, dist, shortlist = search_stage(run, index, depth)
    if methods.rerank:
        ids, dist = rerank_stage(run)
    # what one query costs online: expansion, index search, re-ranking (TTA is extraction, not counted)
    run.timings["query_ms_per_query"] = run.timings["search_ms_per_query"] + run.per_query_ms(
        run.timings.get("qe_s", 0.0) + run.timings.get("kreciprocal_s", 0.0))
    out, ap = _ranking_metrics(ids, ds, k, no_relevant)
    out[f"recall@{k}_vs_exact"] = recall_vs_exact(ids, exact_top, k)
    if shortlist is not None:
        out[f"shortlist_recall@{k}"] = shortlist_recall(shortlist, exact_top)
    if methods.threshold:
        out.update(threshold_stage(run, ids, dist))
    run.config["exact_metrics"] = exact_metrics
    return out, ap, ids[:, :k], run.timings, run.config, run.per_query_f1
