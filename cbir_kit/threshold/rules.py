"""Stage 5, threshold: static and dynamic thresholds and their calibration (notebook 05).

Thresholded retrieval: a static threshold and the dynamic per-gallery threshold.

Input: a distance matrix ``dist`` (Q, G), lower = more similar (e.g. Euclidean distances
of L2-normalised features, as in the CSoNet 2024 paper "Dynamic Threshold for Image
Retrieval").  Items with an infinite distance (never returned) are never retrieved.

* static:  retrieve g for query q  iff  dist[q, g] < T.
* dynamic: the gallery items are split into galleries (by default one gallery per query:
  everything that query searches).  For query q and gallery g,
      mu_{q,g} = mean of the n smallest distances from q to the items of g,
      mu       = mean of mu_{q,g} over all galleries (of the calibration queries),
      T_{q,g}  = T + w * (mu_{q,g} - mu),
  and q retrieves the items of g closer than T_{q,g}.  A query whose nearest items are far
  (a hard query) gets a looser threshold, an easy one a stricter threshold; w = 0 is the
  static threshold.

``calibrate(...)`` fits T (static) or T, w, n (dynamic) by grid search to maximise the
macro-F1 (:func:`cbir_kit.evaluation.metrics.set_metrics`) of the retrieved sets on a calibration
split; ``mu`` is fixed from the same split, so evaluating on other queries uses nothing
from them but their own distances.  Never calibrate on the queries you evaluate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluation import metrics as M
from ..errors import CbirError


def _check_dist(dist) -> np.ndarray:
    dist = np.asarray(dist, dtype=np.float64)
    if dist.ndim != 2:
        raise CbirError(f"the distance matrix must be 2-D (queries, gallery); got shape {dist.shape}")
    if np.isnan(dist).any():
        raise CbirError("the distance matrix has NaN entries; drop the images that failed to load")
    return dist


def _group_index(groups, n_gallery: int) -> tuple[np.ndarray, int]:
    """Gallery item -> gallery number 0..n_groups-1 (all zeros when ``groups`` is None)."""
    if groups is None:
        return np.zeros(n_gallery, dtype=np.int64), 1
    groups = np.asarray(groups)
    if groups.shape != (n_gallery,):
        raise CbirError(f"groups must give one gallery id per gallery item ({n_gallery}); got shape {groups.shape}")
    _, inverse = np.unique(groups, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def gallery_means(dist, n: int, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, group_of_item)``: mu[q, g] = mean of the n smallest finite distances from q to gallery g
    (all of them when g has fewer than n; NaN when it has none)."""
    if n < 1:
        raise CbirError(f"the dynamic threshold needs n >= 1 nearest items per gallery; got {n}")
    dist = _check_dist(dist)
    gid, n_groups = _group_index(groups, dist.shape[1])
    mu = np.full((dist.shape[0], n_groups), np.nan)
    for g in range(n_groups):
        block = np.sort(dist[:, gid == g], axis=1)[:, :n]
        finite = np.isfinite(block)
        with np.errstate(invalid="ignore"):
            mu[:, g] = np.where(finite, block, 0.0).sum(axis=1) / finite.sum(axis=1)
    return mu, gid


@dataclass
class StaticThreshold:
    """Retrieve every item with distance < ``T``."""

    T: float
    calibration_f1: float | None = None

    def thresholds(self, dist, groups=None) -> np.ndarray:
        return np.full(np.shape(dist), self.T, dtype=np.float64)

    def retrieve(self, dist, groups=None) -> np.ndarray:
        """Boolean (Q, G) mask of the retrieved items."""
        return _check_dist(dist) < self.thresholds(dist, groups)

    def params(self) -> dict:
        return {"method": "static", "T": self.T, "calibration_f1": self.calibration_f1}


@dataclass
class DynamicThreshold:
    """Per-gallery threshold T_{q,g} = T + w (mu_{q,g} - mu) (module docstring).

    ``mu = None`` takes the mean of mu_{q,g} over the galleries passed in (the paper's
    formula on one batch); :func:`calibrate` fixes it from the calibration split.
    """

    T: float
    w: float
    n: int
    mu: float | None = None
    calibration_f1: float | None = None

    def thresholds(self, dist, groups=None) -> np.ndarray:
        means, gid = gallery_means(dist, self.n, groups)
        mu = float(np.nanmean(means)) if self.mu is None else self.mu
        per_gallery = self.T + self.w * (np.nan_to_num(means, nan=mu) - mu)
        return per_gallery[:, gid]

    def retrieve(self, dist, groups=None) -> np.ndarray:
        return _check_dist(dist) < self.thresholds(dist, groups)

    def params(self) -> dict:
        return {"method": "dynamic", "T": self.T, "w": self.w, "n": self.n, "mu": self.mu,
                "calibration_f1": self.calibration_f1}


def retrieval_metrics(retrieved, relevant) -> dict:
    """Macro precision / recall / F1 of boolean retrieved sets against boolean relevance (Q, G)."""
    retrieved = np.asarray(retrieved, bool)
    relevant = np.asarray(relevant, bool)
    if retrieved.shape != relevant.shape:
        raise CbirError(f"retrieved {retrieved.shape} and relevant {relevant.shape} masks differ in shape")
    return M.set_metrics((retrieved & relevant).sum(axis=1), retrieved.sum(axis=1), relevant.sum(axis=1))


def _best_T(adjusted: np.ndarray, relevant: np.ndarray, candidates: np.ndarray) -> tuple[float, float]:
    """The T among ``candidates`` maximising macro-F1 of {g : adjusted[q, g] < T}, and that F1.

    Sorting each row once turns every candidate into a count: retrieved(T) = #{adjusted < T}."""
    order = np.argsort(adjusted, axis=1, kind="stable")
    srt = np.take_along_axis(adjusted, order, axis=1)
    cum_rel = np.concatenate([np.zeros((len(srt), 1)), np.cumsum(np.take_along_axis(relevant, order, 1), 1)], 1)
    n_rel = relevant.sum(axis=1)
    valid = n_rel > 0
    n_ret = np.stack([np.searchsorted(row, candidates, side="left") for row in srt])  # (Q, C)
    hits = np.take_along_axis(cum_rel, n_ret, axis=1)
    _, _, f1 = M.set_scores(hits, n_ret, n_rel[:, None])
    scores = f1[valid].mean(axis=0)
    best = int(np.argmax(scores))  # the first (smallest) T among equally good ones
    return float(candidates[best]), float(scores[best])


def _candidates(values: np.ndarray, n_grid: int) -> np.ndarray:
    finite = values[np.isfinite(values)]
    return np.unique(np.quantile(finite, np.linspace(0.0, 1.0, n_grid)))


def calibrate(dist, relevant, method: str = "static", groups=None, n_grid: int = 200,
              n_values=(1, 2, 3, 5, 10, 20, 50), w_values=tuple(np.round(np.linspace(-2, 2, 17), 2))):
    """Fit a threshold on a calibration split: grid search for the best macro-F1.

    ``dist`` (Q, G) distances and ``relevant`` (Q, G) booleans of the calibration queries.
    static: T over ``n_grid`` quantiles of the distances.  dynamic: every (n, w) of the grids
    (w = 0 included, so on the calibration split it never does worse than static), T over
    quantiles of dist - w (mu_{q,g} - mu).  Returns a fitted threshold object.
    """
    dist = _check_dist(dist)
    relevant = np.asarray(relevant, bool)
    if relevant.shape != dist.shape:
        raise CbirError(f"relevant {relevant.shape} must match the distance matrix {dist.shape}")
    if not relevant.any():
        raise CbirError("the calibration split has no relevant item; use more calibration queries")
    if method == "static":
        t, f1 = _best_T(dist, relevant, _candidates(dist, n_grid))
        return StaticThreshold(T=t, calibration_f1=f1)
    if method != "dynamic":
        raise CbirError(f"method={method!r} must be static or dynamic")
    best = None
    static_grid = _candidates(dist, n_grid)
    for n in n_values:
        means, gid = gallery_means(dist, n, groups)
        mu = float(np.nanmean(means))
        offset = np.nan_to_num(means, nan=mu)[:, gid] - mu
        for w in (0.0,) + tuple(float(w) for w in w_values if w != 0):
            adjusted = dist - w * offset
            grid = np.union1d(static_grid, _candidates(adjusted, n_grid)) if w else static_grid
            t, f1 = _best_T(adjusted, relevant, grid)
            if best is None or f1 > best.calibration_f1 + 1e-12:
                best = DynamicThreshold(T=t, w=w, n=int(n), mu=mu, calibration_f1=f1)
    return best


def calibration_split(n_queries: int, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of query indices into (calibration, evaluation), both sorted."""
    if not 0 < fraction < 1:
        raise CbirError(f"the calibration fraction must lie strictly between 0 and 1; got {fraction}")
    n_cal = int(round(fraction * n_queries))
    if n_cal < 1 or n_cal >= n_queries:
        raise CbirError(f"cannot split {n_queries} queries into a calibration and an evaluation part "
                        f"with fraction {fraction}; use more queries")
    perm = np.random.default_rng(seed).permutation(n_queries)
    return np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
