"""Stage 6, evaluation: the Revisited Oxford / Paris protocol (Radenović et al., CVPR 2018; notebook 07).

Ground truth per query (``gnd[i]``, the revisitop pickle format): gallery ids in ``easy``,
``hard`` and ``junk`` (plus the query box ``bbx``).  Three settings decide which ids are
positives ("ok") and which are ignored ("junk"):

* Easy:   ok = easy,         junk = junk + hard
* Medium: ok = easy + hard,  junk = junk
* Hard:   ok = hard,         junk = junk + easy

For one query with ranked gallery ids, junk ids are removed from the ranking; the
remaining positives sit at 0-based positions ``p_0 < p_1 < ... `` and ``n = |ok|``.

* AP (trapezoidal rule over the precision-recall curve):
  ``AP = sum_j (1/n) * (P0_j + P1_j) / 2`` with ``P0_j = j / p_j`` (``1`` when ``p_j = 0``)
  and ``P1_j = (j + 1) / (p_j + 1)``; positives missing from a truncated ranking add 0.
* mP@k: with ``last`` = the 1-based position of the last positive found,
  ``P@k = |{j : p_j + 1 <= min(k, last)}| / min(k, last)`` (0 if no positive was found).
* Queries with no positive in a setting are skipped (NaN per query, left out of the mean).
* Reported numbers are x100, as the community writes them (``mAP_medium = 64.67``).

Rankings are query-major: ``ranks[q]`` lists gallery ids for query ``q``, best first
(revisitop's own code stores the transpose).  Use :func:`evaluate_ranks` on ranks from
any features, or :func:`ranks_from_similarity` to rank a (Q, G) similarity matrix.
"""
from __future__ import annotations

import numpy as np

from ..errors import CbirError
from ..datasets.revisitop import SETTINGS, load_gnd, setting_lists

__all__ = ["KS", "SETTINGS", "evaluate_ranks", "load_gnd", "per_query_scores", "positive_positions",
           "precision_at_ks", "ranks_from_similarity", "relevance_without_junk", "setting_lists", "summarize",
           "trapezoid_ap"]

KS = (1, 5, 10)


def positive_positions(ranked_ids: np.ndarray, ok: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """0-based positions of the positives in ``ranked_ids`` once junk ids are removed."""
    ranked_ids = np.asarray(ranked_ids)
    is_pos = np.isin(ranked_ids, ok)
    is_junk = np.isin(ranked_ids, junk)
    junk_before = np.cumsum(is_junk) - is_junk  # junk strictly before each position
    where = np.flatnonzero(is_pos)
    return where - junk_before[where]


def trapezoid_ap(positions: np.ndarray, n_ok: int) -> float:
    """Trapezoidal AP from the sorted 0-based junk-free positions of the found positives."""
    p = np.asarray(positions, dtype=np.float64)
    j = np.arange(len(p), dtype=np.float64)
    p0 = np.where(p == 0, 1.0, j / np.where(p == 0, 1.0, p))
    p1 = (j + 1) / (p + 1)
    return float(np.sum((p0 + p1) / 2.0) / n_ok)


def precision_at_ks(positions: np.ndarray, ks=KS) -> np.ndarray:
    """revisitop's P@k: hits in the top ``min(k, last positive)`` divided by that number."""
    pos1 = np.asarray(positions) + 1
    if len(pos1) == 0:
        return np.zeros(len(ks))
    out = []
    for k in ks:
        kq = min(int(pos1.max()), int(k))
        out.append(np.count_nonzero(pos1 <= kq) / kq)
    return np.array(out, dtype=np.float64)


def per_query_scores(ranks: np.ndarray, gnd: list[dict], setting: str, ks=KS) -> tuple[np.ndarray, np.ndarray]:
    """Per-query AP (Q,) and P@k (Q, len(ks)) in [0, 1]; NaN rows for queries with no positive."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or len(ranks) != len(gnd):
        raise CbirError(f"ranks must have shape (n_queries={len(gnd)}, depth); got {ranks.shape}")
    aps = np.full(len(gnd), np.nan)
    prs = np.full((len(gnd), len(ks)), np.nan)
    for q, entry in enumerate(gnd):
        ok, junk = setting_lists(entry, setting)
        if len(ok) == 0:
            continue
        pos = positive_positions(ranks[q], ok, junk)
        aps[q] = trapezoid_ap(pos, len(ok))
        prs[q] = precision_at_ks(pos, ks)
    return aps, prs


def summarize(per_setting: dict[str, tuple[np.ndarray, np.ndarray]], ks=KS) -> dict[str, float]:
    """x100 means over non-skipped queries: ``mAP_<setting>`` and ``mP@<k>_<setting>``."""
    out: dict[str, float] = {}
    for setting, (aps, prs) in per_setting.items():
        valid = np.isfinite(aps)
        out[f"mAP_{setting}"] = 100.0 * float(aps[valid].mean()) if valid.any() else float("nan")
    for setting, (aps, prs) in per_setting.items():
        valid = np.isfinite(aps)
        for i, k in enumerate(ks):
            out[f"mP@{k}_{setting}"] = 100.0 * float(prs[valid, i].mean()) if valid.any() else float("nan")
    return out


def evaluate_ranks(ranks: np.ndarray, gnd: list[dict], ks=KS, settings=SETTINGS) -> dict[str, float]:
    """The whole protocol on query-major ``ranks`` (Q, depth): mAP and mP@k per setting, x100."""
    return summarize({s: per_query_scores(ranks, gnd, s, ks) for s in settings}, ks)


def ranks_from_similarity(similarity: np.ndarray) -> np.ndarray:
    """Query-major ranking of a (Q, G) similarity matrix, best first (ties: lower id first)."""
    return np.argsort(-np.asarray(similarity), axis=1, kind="stable")


def relevance_without_junk(ranked_ids: np.ndarray, gnd_entry: dict, setting: str = "medium") -> tuple[np.ndarray, int]:
    """Binary relevance of a ranking after junk removal (padded with False to its length), and |ok|.

    Lets the standard metrics (AP, P@k, R@k) run on revisitop ground truth.
    """
    ok, junk = setting_lists(gnd_entry, setting)
    ranked_ids = np.asarray(ranked_ids)
    kept = ranked_ids[~np.isin(ranked_ids, junk)]
    rel = np.zeros(len(ranked_ids), dtype=bool)
    rel[:len(kept)] = np.isin(kept, ok)
    return rel, len(ok)
