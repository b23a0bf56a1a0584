"""The main job: dataset -> features (cached) -> index -> search -> metrics -> timings.

``evaluate(...)`` is what ``cbir evaluate`` runs and what notebooks call; it returns an
:class:`EvalResult` whose ``to_dict()`` is the JSON contract of DESIGN.md.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import metrics as M
from .datasets import Dataset, load
from .errors import CbirError
from .features import FeatureCache, OFFLINE_MODEL, create_extractor
from .index import ExactIndex


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
    ranked_ids: np.ndarray | None = None  # top-k gallery ids per query, best first

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset, "model": self.model, "n_queries": self.n_queries,
            "n_gallery": self.n_gallery, "k": self.k, "metrics": self.metrics, "timings": self.timings,
            "cache": self.cache, "skipped": [{"image": i, "reason": r} for i, r in self.skipped],
            "config": self.config,
        }

    def write_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON atomically (temporary file, then rename)."""
        write_json_atomic(path, self.to_dict())

    def table(self) -> str:
        """A readable text table of the metrics and timings."""
        lines = [f"dataset  {self.dataset}", f"model    {self.model}",
                 f"queries  {self.n_queries}   gallery {self.n_gallery}   k {self.k}   "
                 f"cache {'hit' if self.cache.get('hit') else 'miss'}", "", "metric        value"]
        lines += [f"{name:<13} {value:.4f}" for name, value in self.metrics.items()]
        lines += ["", "timing                  value"]
        lines += [f"{name:<23} {value:.3f}" for name, value in self.timings.items()]
        if self.skipped:
            lines += ["", f"skipped {len(self.skipped)} image(s) that could not be loaded:"]
            lines += [f"  {img}: {reason}" for img, reason in self.skipped]
        return "\n".join(lines)


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=float)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def full_ranking_metrics(index: ExactIndex, queries: np.ndarray, ds: Dataset, k: int,
                         chunk: int = 256) -> tuple[dict, np.ndarray, np.ndarray]:
    """Rank the whole gallery for every query (in chunks) and compute the metrics.

    For leave-one-out datasets the query's own gallery entry is removed from its ranking.
    Returns ``(metrics, per-query AP, top-k ids)``.
    """
    n_gallery = index.ntotal
    depth = n_gallery - 1 if ds.leave_one_out else n_gallery
    if depth < 1:
        raise CbirError(f"{ds.name}: the gallery has no item to retrieve for a query")
    n_relevant = ds.n_relevant()
    keep_cols = max(k, 10)
    rels, aps, tops = [], [], []
    for start in range(0, len(queries), chunk):
        _, ids = index.search(queries[start:start + chunk], n_gallery)
        if ds.leave_one_out:
            own = np.arange(start, start + len(ids))[:, None]
            ids = ids[ids != own].reshape(len(ids), depth)
        rel = M.relevance_matrix(ids, ds.query_labels[start:start + chunk], ds.gallery_labels)
        aps.append(M.average_precisions(rel, n_relevant[start:start + chunk]))
        rels.append(rel[:, :keep_cols])
        tops.append(ids[:, :k])
    rel = np.concatenate(rels)
    ap = np.concatenate(aps)
    out = M.topk_metrics(rel, n_relevant, min(k, depth))
    out["mAP"] = float(np.nanmean(ap))
    return out, ap, np.concatenate(tops)


def evaluate(dataset: str | Dataset = "demo", model: str = OFFLINE_MODEL, k: int = 10,
             root=None, cache_dir=None, device: str = "auto", batch_size: int = 32,
             num_workers: int | None = None, progress: bool = True, seed: int = 0) -> EvalResult:
    """Run the whole pipeline once and measure it (see the module docstring)."""
    if k < 1:
        raise CbirError(f"--k must be at least 1; got {k}")
    t_start = time.perf_counter()
    ds = dataset if isinstance(dataset, Dataset) else load(dataset, root=root, seed=seed)
    if ds.n_queries == 0:
        raise CbirError(f"{ds.name}: the query set is empty")
    extractor = create_extractor(model, device=device, batch_size=batch_size, num_workers=num_workers)
    cache = FeatureCache(cache_dir)

    t0 = time.perf_counter()
    gallery_feats, g_hit = cache.get_or_extract(extractor, ds.gallery, progress, desc="gallery")
    if ds.leave_one_out:
        query_feats, q_hit = gallery_feats, g_hit
    else:
        query_feats, q_hit = cache.get_or_extract(extractor, ds.query, progress, desc="queries")
    extract_s = time.perf_counter() - t0
    n_images = ds.n_gallery + (0 if ds.leave_one_out else ds.n_queries)

    skipped = [(img, reason) for _, img, reason in gallery_feats.failures]
    if not ds.leave_one_out:
        skipped += [(img, reason) for _, img, reason in query_feats.failures]
    if skipped:
        ds = ds.subset(query_feats.ok, gallery_feats.ok)
    gallery = gallery_feats.vectors[gallery_feats.ok]
    queries = query_feats.vectors[query_feats.ok]
    if len(queries) == 0:
        raise CbirError(f"{ds.name}: no query image could be loaded")

    t0 = time.perf_counter()
    index = ExactIndex("ip").fit(gallery)
    index_build_s = time.perf_counter() - t0

    k_eff = min(k, index.ntotal - (1 if ds.leave_one_out else 0))
    t0 = time.perf_counter()
    index.search(queries, k_eff + (1 if ds.leave_one_out else 0))
    search_s = time.perf_counter() - t0

    metric_values, ap, top = full_ranking_metrics(index, queries, ds, k_eff)
    total_s = time.perf_counter() - t_start
    timings = {
        "extract_s": extract_s,
        "images_per_s": n_images / extract_s if extract_s > 0 else float("inf"),
        "index_build_s": index_build_s,
        "search_ms_per_query": 1000.0 * search_s / len(queries),
        "total_s": total_s,
    }
    return EvalResult(
        dataset=ds.name, model=model, n_queries=len(queries), n_gallery=len(gallery), k=k_eff,
        metrics=metric_values, timings=timings,
        cache={"hit": bool(g_hit and q_hit), "dir": str(cache.dir)},
        skipped=skipped, config={"seed": seed, "device": str(extractor.device), "index": "Flat",
                                 "metric": "inner product (cosine on L2-normalised features)"},
        per_query_ap=ap, ranked_ids=top,
    )
