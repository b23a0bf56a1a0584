"""revisitop protocol against a direct transcription of revisitop's published evaluate.py.

The reference below follows ``compute_ap`` / ``compute_map`` of revisitop's
``python/evaluate.py`` loop for loop (db-major ``ranks`` of shape (N, Q), junk shifting
with two pointers, trapezoids accumulated one positive at a time), written here
independently of cbir_kit.evaluation.revisitop_map.
"""
from __future__ import annotations

import numpy as np
import pytest

from cbir_kit.evaluation import revisitop_map as RV
from cbir_kit.errors import CbirError


def ref_compute_ap(ranks, nres):
    ap = 0.0
    recall_step = 1.0 / nres
    for j in range(len(ranks)):
        rank = ranks[j]
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def ref_compute_map(ranks, gnd, kappas):
    """ranks: (db_size, n_queries), 0-based gallery ids, as in revisitop."""
    total = 0.0
    nq = len(gnd)
    aps = np.zeros(nq)
    pr = np.zeros(len(kappas))
    prs = np.zeros((nq, len(kappas)))
    nempty = 0
    for i in range(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            aps[i] = float("nan")
            prs[i, :] = float("nan")
            nempty += 1
            continue
        qgndj = np.array(gnd[i].get("junk", []))
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k = 0
        ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        ap = ref_compute_ap(pos, len(qgnd))
        total += ap
        aps[i] = ap
        pos += 1
        for j in range(len(kappas)):
            kq = min(max(pos), kappas[j])
            prs[i, j] = (pos <= kq).sum() / kq
        pr = pr + prs[i, :]
    return total / (nq - nempty), aps, pr / (nq - nempty), prs


def ref_protocol(ranks_db_major, gnd, ks=(1, 5, 10)):
    """revisitop's example_evaluate: the three settings, x100."""
    out = {}
    settings = {
        "easy": lambda g: (g["easy"], list(g["junk"]) + list(g["hard"])),
        "medium": lambda g: (list(g["easy"]) + list(g["hard"]), g["junk"]),
        "hard": lambda g: (g["hard"], list(g["junk"]) + list(g["easy"])),
    }
    for name, make in settings.items():
        gnd_t = [dict(zip(("ok", "junk"), make(g))) for g in gnd]
        m, _, mpr, _ = ref_compute_map(ranks_db_major, gnd_t, list(ks))
        out[f"mAP_{name}"] = 100 * m
        for k, v in zip(ks, mpr):
            out[f"mP@{k}_{name}"] = 100 * v
    return out


@pytest.fixture(scope="module", params=["roxford5k", "rparis6k"])
def real_gnd(request, shared_data):
    path = shared_data / request.param / f"gnd_{request.param}.pkl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return RV.load_gnd(path)


@pytest.mark.shared_data
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_published_evaluate_on_real_gnd(real_gnd, seed):
    gnd = real_gnd["gnd"]
    n_db = len(real_gnd["imlist"])
    rng = np.random.default_rng(seed)
    sim = rng.standard_normal((len(gnd), n_db))
    # Make the rankings informative (positives drift up) so AP spans a wide range.
    for q, g in enumerate(gnd):
        sim[q, g["easy"]] += rng.uniform(0, 3)
        sim[q, g["hard"]] += rng.uniform(0, 2)
    ranks = RV.ranks_from_similarity(sim)
    ours = RV.evaluate_ranks(ranks, gnd)
    ref = ref_protocol(ranks.T.copy(), gnd)
    assert set(ours) == set(ref)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    assert 0 < ours["mAP_hard"] < ours["mAP_medium"] <= 100


@pytest.mark.shared_data
def test_skips_queries_without_positives_like_reference(real_gnd):
    gnd = [dict(g) for g in real_gnd["gnd"]]
    gnd[0] = dict(gnd[0], hard=[])  # query 0 now has no Hard positive
    n_db = len(real_gnd["imlist"])
    ranks = np.stack([np.random.default_rng(q).permutation(n_db) for q in range(len(gnd))])
    ours = RV.evaluate_ranks(ranks, gnd)
    ref = ref_protocol(ranks.T.copy(), gnd)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key
    aps, _ = RV.per_query_scores(ranks, gnd, "hard")
    assert np.isnan(aps[0]) and np.isfinite(aps[1:]).all()


def test_worked_example_by_hand():
    # gallery ids 0..5; ranking 3 0 5 1 2 4; ok = {0, 1}; junk = {5}
    gnd = [{"easy": [0, 1], "hard": [], "junk": [5], "bbx": [0, 0, 1, 1]}]
    ranks = np.array([[3, 0, 5, 1, 2, 4]])
    # junk removed: 3 0 1 2 4 -> positives at 0-based positions 1, 2
    # trapezoids: j=0 (p=1): P0 = 0/1, P1 = 1/2 -> 0.25 * 1/2 ; j=1 (p=2): P0 = 1/2, P1 = 2/3
    ap = (0.0 + 0.5) / 2 / 2 + (0.5 + 2 / 3) / 2 / 2
    aps, prs = RV.per_query_scores(ranks, gnd, "easy")
    assert aps[0] == pytest.approx(ap)
    # last positive at 1-based position 3: P@1 = 0/1, P@5 = 2/min(5,3), P@10 = 2/3
    np.testing.assert_allclose(prs[0], [0.0, 2 / 3, 2 / 3])
    out = RV.evaluate_ranks(ranks, gnd)
    assert out["mAP_easy"] == pytest.approx(100 * ap)
    assert np.isnan(out["mAP_hard"])  # no hard positives at all


def test_truncated_ranking_counts_missing_positives_as_zero():
    gnd = [{"easy": [0, 1, 2, 3], "hard": [], "junk": []}]
    ranks = np.array([[0, 9, 1]])
    aps, prs = RV.per_query_scores(ranks, gnd, "easy")
    expect = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 4
    assert aps[0] == pytest.approx(expect)
    empty = np.array([[7, 8, 9]])
    aps, prs = RV.per_query_scores(empty, gnd, "easy")
    assert aps[0] == 0 and (prs[0] == 0).all()


def test_relevance_without_junk():
    rel, n = RV.relevance_without_junk(np.array([3, 0, 5, 1, 2, 4]), {"easy": [0], "hard": [1], "junk": [5]})
    assert n == 2
    assert rel.tolist() == [False, True, True, False, False, False]


def test_bad_input():
    with pytest.raises(CbirError, match="setting"):
        RV.setting_lists({"easy": []}, "extreme")
    with pytest.raises(CbirError, match="ranks must have shape"):
        RV.per_query_scores(np.zeros(3, int), [{}], "easy")
    with pytest.raises(CbirError, match="does not exist"):
        RV.load_gnd("/nonexistent/gnd.pkl")
