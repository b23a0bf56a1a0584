"""The pipeline: ``evaluate()``, dataset -> features (cached) -> index -> search -> metrics -> timings (notebooks 01, 03).

``evaluate(...)`` is what ``cbir evaluate`` runs and what notebooks call; it returns an
:class:`EvalResult` whose ``to_dict()`` is the JSON contract of DESIGN.md.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..evaluation import metrics as M
from .._io import write_json
from ..datasets import Dataset, load
from ..errors import CbirError, CbirWarning
from ..evaluation import revisitop_map
from ..features import FeatureCache, OFFLINE_MODEL, create_extractor
from ..features.distributed import cluster_extraction
from ..features.specs import FINETUNED_PREFIX
from ..index import ExactIndex
from ..runtime import Runtime, runtime_of


@dataclass
class EvalResult:
    """Everything one evaluation measured; ``to_dict()`` gives the JSON contract."""

    dataset: str
    model: str
    n_queries: int
    n_gallery: int
    k: int
    metrics: dict
    timings: dict
    cache: dict
    skipped: list = field(default_factory=list)  # (image, reason) of images that failed to load
    config: dict = field(default_factory=dict)
    per_query_ap: np.ndarray | None = None
    per_query_f1: tuple | None = None     # (evaluation query rows, their F1) when a threshold was calibrated
    ranked_ids: np.ndarray | None = None  # top-k gallery ids per query, best first
    curves: dict = field(default_factory=dict)  # "over_k" / "over_threshold": metrics.precision_recall_over_*
    ds: Dataset | None = field(default=None, repr=False)  # the dataset the rankings index into (for plots)

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset, "model": self.model, "n_queries": self.n_queries,
            "n_gallery": self.n_gallery, "k": self.k, "metrics": self.metrics, "timings": self.timings,
            "cache": self.cache, "skipped": [{"image": i, "reason": r} for i, r in self.skipped],
            "config": self.config,
        }

    def write_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON atomically (temporary file, then rename)."""
        write_json(path, self.to_dict())

    def table(self) -> str:
        """A readable text table of the metrics and timings."""
        lines = [f"dataset  {self.dataset}", f"model    {self.model}",
                 f"queries  {self.n_queries}   gallery {self.n_gallery}   k {self.k}   "
                 f"cache {'hit' if self.cache.get('hit') else 'miss'}", ""]
        lines += skip_notice(self.skipped)
        lines += ["metric        value"] + [f"{name:<13} {value:.4f}" for name, value in self.metrics.items()]
        lines += ["", "timing                  value"]
        lines += [f"{name:<23} {value:.3f}" for name, value in self.timings.items()]
        return "\n".join(lines)


def skip_notice(skipped) -> list[str]:
    """Lines naming each skipped ``(image, reason)``, then a blank line; none when nothing was skipped."""
    if not skipped:
        return []
    return [f"skipped {len(skipped)} image(s) that could not be loaded:"] + \
        [f"  {img}: {reason}" for img, reason in skipped] + [""]


def full_ranking_metrics(index: ExactIndex, queries: np.ndarray, ds: Dataset, k: int, chunk: int = 256,
                         no_relevant: str = "skip") -> tuple[dict, np.ndarray, np.ndarray]:
    """Rank the whole gallery for every query (in chunks) and compute the metrics.

    For leave-one-out datasets the query's own gallery entry is removed from its ranking.
    With revisitop ground truth (``ds.gnd``) the standard metrics use the Medium setting
    (relevant = easy + hard, junk removed from the ranking) and the protocol's
    ``mAP_<setting>`` / ``mP@k_<setting>`` (x100, :mod:`cbir_kit.evaluation.revisitop_map`) are added.
    Also fills ``curves``: precision/recall/F1 over k and, for cosine scores on label
    ground truth, over score thresholds t in [-1, 1] (the set {score >= t}: a static threshold).
    Returns ``(metrics, per-query AP, top-k ids, curves)``.
    """
    n_gallery = index.ntotal
    depth = n_gallery - 1 if ds.leave_one_out else n_gallery
    if depth < 1:
        raise CbirError(f"{ds.name}: the gallery has no item to retrieve for a query")
    gnd = ds.gnd
    if gnd is not None:
        n_relevant = np.array([len(revisitop_map.setting_lists(g, "medium")[0]) for g in gnd])
    else:
        n_relevant = ds.n_relevant()
        warn_unanswerable_queries(ds, n_relevant)
    keep_cols = max(k, 10)
    curve_ks = np.unique(np.r_[np.arange(1, min(depth, 100) + 1), np.geomspace(1, depth, 200).astype(np.int64)])
    thresholds = np.linspace(-1.0, 1.0, 201) if index.metric == "ip" else None
    rels, aps, tops, k_hits, t_hits, t_retrieved, extras = [], [], [], [], [], [], []
    per_setting = {s: ([], []) for s in revisitop_map.SETTINGS}
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk]
        own = np.arange(start, start + len(block)) if ds.leave_one_out else None
        scores, ids = index.search(block, depth, own_ids=own)
        if gnd is not None:
            chunk_gnd = gnd[start:start + chunk]
            rel = np.stack([revisitop_map.relevance_without_junk(row, g, "medium")[0] for row, g in zip(ids, chunk_gnd)])
            for setting, (s_aps, s_prs) in per_setting.items():
                a, p = revisitop_map.per_query_scores(ids, chunk_gnd, setting)
                s_aps.append(a)
                s_prs.append(p)
        else:
            rel = M.relevance_matrix(ids, ds.query_labels[start:start + chunk], ds.gallery_labels)
        aps.append(M.average_precisions(rel, n_relevant[start:start + chunk]))
        extras.append(M.ranking_extras(rel, n_relevant[start:start + chunk], min(k, depth)))
        # copies: a slice would keep the chunk's whole (chunk, gallery) arrays alive until the end
        rels.append(rel[:, :keep_cols].copy())
        tops.append(ids[:, :k].copy())
        k_hits.append(M.hits_at_ks(rel, curve_ks))
        if thresholds is not None and gnd is None:
            hits, retrieved = M.threshold_counts(scores, rel, thresholds)
            t_hits.append(hits)
            t_retrieved.append(retrieved)
    rel = np.concatenate(rels)
    ap = np.concatenate(aps)
    out = M.topk_metrics(rel, n_relevant, min(k, depth), no_relevant)
    out["mAP"] = M.query_mean(ap, n_relevant, no_relevant)
    out.update({name: M.query_mean(np.concatenate([e[name] for e in extras]), n_relevant, no_relevant)
                for name in extras[0]})
    if gnd is not None:
        out.update(revisitop_map.summarize({s: (np.concatenate(a), np.concatenate(p)) for s, (a, p) in per_setting.items()}))
    curves = {"over_k": {"k": curve_ks, **M.set_metrics_curve(np.concatenate(k_hits), curve_ks, n_relevant)}}
    if t_hits:
        curves["over_threshold"] = {"threshold": thresholds, **M.set_metrics_curve(
            np.concatenate(t_hits), np.concatenate(t_retrieved), n_relevant)}
    return out, ap, np.concatenate(tops), curves


def warn_unanswerable_queries(ds: Dataset, n_relevant: np.ndarray) -> None:
    """One :class:`CbirWarning` naming the classes whose queries have no relevant gallery item.

    Under leave-one-out that is a class of a single image.  Such a query is left out of every
    metric (or counts as 0 in every one with ``no_relevant="zero"``): there is nothing it could find.
    """
    classes = sorted({str(label) for label in ds.query_labels[np.asarray(n_relevant) == 0]})
    if not classes:
        return
    names = ", ".join(classes[:5]) + (f" and {len(classes) - 5} more" if len(classes) > 5 else "")
    if ds.leave_one_out:
        what, fix = f"class(es) with a single image: {names}", "add a second image to each or remove them"
    else:
        what, fix = f"query class(es) with no gallery image: {names}", "add gallery images of them or drop those queries"
    warnings.warn(f"{ds.name}: {len(classes)} {what}; their queries have nothing to find and are left out of "
                  f"every metric, or count as 0 in every one with no_relevant='zero' ({fix})", CbirWarning, stacklevel=3)


def unanswerable(ds: Dataset) -> int:
    """How many queries have no relevant gallery item (revisitop: none in the Medium setting)."""
    if ds.gnd is not None:
        return int(sum(len(revisitop_map.setting_lists(g, "medium")[0]) == 0 for g in ds.gnd))
    return int((ds.n_relevant() == 0).sum())


def clamp_k(k: int, n_gallery: int, leave_one_out: bool) -> int:
    """``k`` capped at what one query can retrieve: the gallery, less the query itself under leave-one-out.

    A :class:`CbirWarning` names ``k`` and the gallery size when it caps.
    """
    most = n_gallery - (1 if leave_one_out else 0)
    if k > most >= 1:
        loo = f", {most} of them retrievable per query under leave-one-out" if leave_one_out else ""
        warnings.warn(f"k={k} is larger than the gallery ({n_gallery} images{loo}); using {most}",
                      CbirWarning, stacklevel=2)
    return min(k, most)


def embed_dataset(ds: Dataset, model: str, runtime: Runtime):
    """Features of ``ds`` through the cache, images that failed to load dropped (with a note each).

    With ``runtime.cluster`` the images the cache lacks are embedded on that cluster
    (:mod:`cbir_kit.features.distributed`), with the same features to the bit.

    Returns ``(ds, queries, gallery, info)``; ``info`` holds the extractor, the cache, the
    seconds and images of extraction, whether it was a cache hit, the skipped images and the
    content hashes of the kept gallery images.
    """
    extractor = create_extractor(model, device=runtime.device, batch_size=runtime.batch_size,
                                 num_workers=runtime.num_workers)
    t0 = time.perf_counter()
    with cluster_extraction(runtime.cluster) as remote:     # runtime.cluster: missing features made there
        cache = FeatureCache(runtime.cache_dir, remote=remote)
        query_feats, gallery_feats, hit = cache.dataset_features(extractor, ds, runtime.progress)
    cache.remote = None                                      # later stages (TTA) extract in this process
    info = {"extractor": extractor, "cache": cache, "extract_s": time.perf_counter() - t0, "hit": hit,
            "n_images": ds.n_gallery + (0 if ds.leave_one_out else ds.n_queries)}
    info["gallery_fingerprints"] = [fp for fp, ok in zip(gallery_feats.fingerprints, gallery_feats.ok) if ok]
    skipped = [(img, reason) for _, img, reason in gallery_feats.failures]
    if not ds.leave_one_out:
        skipped += [(img, reason) for _, img, reason in query_feats.failures]
    if skipped:
        ds = ds.subset(query_feats.ok, gallery_feats.ok)
    queries = query_feats.vectors[query_feats.ok]
    if len(queries) == 0:
        raise CbirError(f"{ds.name}: no query image could be loaded")
    info["skipped"] = skipped
    return ds, queries, gallery_feats.vectors[gallery_feats.ok], info


def hold_out_trained_images(model: str, trained_head, ds: Dataset, queries, gallery):
    """Leave out what a head or a fine-tuned network was trained on; ``(ds, queries, gallery, config)``.

    The head maps the features too.  The config entry says what was left out (empty when nothing).
    """
    if trained_head is not None:
        ds, queries, gallery, held_out = trained_head.prepare_evaluation(model, ds, queries, gallery)
        return ds, queries, gallery, ({"head": held_out} if held_out else {})
    if model.startswith(FINETUNED_PREFIX):  # a fine-tuned network is tested on what it was not trained on
        from ..features.checkpoint import finetuned_hold_out
        ds, queries, gallery, held_out = finetuned_hold_out(model, ds, queries, gallery)
        return ds, queries, gallery, ({"held_out": held_out} if held_out else {})
    return ds, queries, gallery, {}


def evaluate(dataset: str | Dataset = "demo", model: str = OFFLINE_MODEL, k: int = 10, *,
             head: str | os.PathLike | None = None, methods=None, no_relevant: str = "skip",
             runtime: Runtime | None = None, **runtime_options) -> EvalResult:
    """Run the whole pipeline once and measure it (see the module docstring).

    ``methods``: a :class:`cbir_kit.pipeline.stages.Methods` (ANN index, hash shortlist, QE, DBA,
    k-reciprocal re-ranking, TTA, threshold); the exact metrics then move to
    ``config["exact_metrics"]`` and ``metrics`` / ``timings`` describe the methods' pipeline.

    ``head``: a head file from ``cbir train``; it maps the frozen features of queries and
    gallery before indexing, and the images it was trained on are left out (held-out test).
    A ``finetuned:PATH`` model (``cbir finetune``) leaves out its training images the same way.

    ``no_relevant``: the rule for queries with no relevant item in the gallery, the same for every
    metric (:func:`cbir_kit.evaluation.metrics.query_mean`): ``skip`` them (default) or count them
    as ``zero`` (trec_eval's rule); ``config["no_relevant"]`` records the rule and how many there were.

    ``runtime`` (:class:`cbir_kit.runtime.Runtime`): data root, cache, device, batch size,
    decoding threads, progress bars and seed; single fields may be given as keywords instead,
    e.g. ``evaluate("demo", progress=False)``.
    """
    rt = runtime_of(runtime, runtime_options)
    if k < 1:
        raise CbirError(f"k={k!r} must be at least 1")
    if no_relevant not in M.NO_RELEVANT_RULES:
        raise CbirError(f"no_relevant={no_relevant!r} must be one of {', '.join(M.NO_RELEVANT_RULES)}")
    t_start = time.perf_counter()
    trained_head = None
    if head is not None:  # checked before any extraction: a wrong head fails fast
        from ..features.checkpoint import load_head
        trained_head = load_head(head)
        trained_head.check_base(model)
    if methods is not None and methods.tta and trained_head is not None:
        raise CbirError("tta= cannot be combined with head= (the head maps features, not images)")
    ds = dataset if isinstance(dataset, Dataset) else load(dataset, root=rt.root, seed=rt.seed)
    if ds.n_queries == 0:
        raise CbirError(f"{ds.name}: the query set is empty")
    ds, queries, gallery, extraction = embed_dataset(ds, model, rt)
    ds, queries, gallery, held_out = hold_out_trained_images(model, trained_head, ds, queries, gallery)

    t0 = time.perf_counter()
    index = ExactIndex("ip").fit(gallery)
    index_build_s = time.perf_counter() - t0
    k_eff = clamp_k(k, index.ntotal, ds.leave_one_out)
    t0 = time.perf_counter()
    index.search(queries, k_eff, own_ids=np.arange(len(queries)) if ds.leave_one_out else None)
    search_s = time.perf_counter() - t0

    metric_values, ap, top, curves = full_ranking_metrics(index, queries, ds, k_eff, no_relevant=no_relevant)
    method_timings, method_config, per_query_f1 = {}, {}, None
    if methods is not None and methods.active():
        from .stages import apply_methods
        metric_values, ap, top, method_timings, method_config, per_query_f1 = apply_methods(
            methods, queries, gallery, ds, k_eff, metric_values, extraction["extractor"], extraction["cache"], rt,
            no_relevant)
    extract_s = extraction["extract_s"]
    timings = {"extract_s": extract_s,
               "images_per_s": extraction["n_images"] / extract_s if extract_s > 0 else float("inf"),
               "index_build_s": index_build_s, "search_ms_per_query": 1000.0 * search_s / len(queries),
               **method_timings, "total_s": time.perf_counter() - t_start}
    return EvalResult(
        dataset=ds.name, model=model, n_queries=len(queries), n_gallery=len(gallery), k=k_eff,
        metrics=metric_values, timings=timings,
        cache={"hit": bool(extraction["hit"]), "dir": str(extraction["cache"].dir)},
        skipped=extraction["skipped"], config={"seed": rt.seed, "device": str(extraction["extractor"].device),
                                               "index": "Flat",
                                               "metric": "inner product (cosine on L2-normalised features)",
                                               "no_relevant": {"rule": no_relevant,
                                                               "queries": unanswerable(ds)},
                                               **held_out, **method_config},
        per_query_ap=ap, per_query_f1=per_query_f1, ranked_ids=top, curves=curves, ds=ds,
    )
