"""Standard metrics cross-checked against torchmetrics and scikit-learn on random rankings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP, RetrievalPrecision, RetrievalRecall

from cbir_kit.evaluation import metrics as M


def random_problem(seed, n_queries=25, n_gallery=80, n_classes=5):
    rng = np.random.default_rng(seed)
    gallery_labels = rng.integers(0, n_classes, n_gallery)
    query_labels = rng.integers(0, n_classes, n_queries)
    scores = rng.standard_normal((n_queries, n_gallery))
    scores += 0.8 * (gallery_labels[None, :] == query_labels[:, None])  # informative rankings
    # torchmetrics (1.9) treats items scored <= 0 as not relevant; positive scores keep the
    # ranking and make its definitions the standard ones.
    return np.exp(scores), query_labels, gallery_labels


def ranked(scores, query_labels, gallery_labels):
    ids = np.argsort(-scores, axis=1, kind="stable")
    rel = M.relevance_matrix(ids, query_labels, gallery_labels)
    n_rel = (gallery_labels[None, :] == query_labels[:, None]).sum(axis=1)
    return ids, rel, n_rel


def torchmetric(metric, scores, query_labels, gallery_labels):
    target = torch.as_tensor(gallery_labels[None, :] == query_labels[:, None])
    indexes = torch.arange(len(scores))[:, None].expand_as(target)
    return float(metric(torch.as_tensor(scores).flatten(), target.flatten(), indexes=indexes.flatten()))


@pytest.mark.parametrize("seed", range(3))
def test_map_precision_recall_hit_rate_match_torchmetrics(seed):
    scores, ql, gl = random_problem(seed)
    _, rel, n_rel = ranked(scores, ql, gl)
    assert (n_rel > 0).all()
    assert M.mean_average_precision(rel, n_rel) == pytest.approx(
        torchmetric(RetrievalMAP(), scores, ql, gl), abs=1e-6)
    for k in (1, 5, 10, 30):
        assert M.precision_at_k(rel, k) == pytest.approx(
            torchmetric(RetrievalPrecision(top_k=k), scores, ql, gl), abs=1e-6)
        assert M.recall_at_k(rel, n_rel, k) == pytest.approx(
            torchmetric(RetrievalRecall(top_k=k), scores, ql, gl), abs=1e-6)
        assert M.hit_rate_at_k(rel, k) == pytest.approx(
            torchmetric(RetrievalHitRate(top_k=k), scores, ql, gl), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_average_precisions_match_sklearn(seed):
    scores, ql, gl = random_problem(seed)
    _, rel, n_rel = ranked(scores, ql, gl)
    ours = M.average_precisions(rel, n_rel)
    for q in range(len(scores)):
        assert ours[q] == pytest.approx(average_precision_score(gl == ql[q], scores[q]), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_from_scores_with_ties_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    relevant = rng.random(60) < 0.3
    relevant[0] = True
    scores = rng.integers(0, 6, 60).astype(float)  # many ties
    assert M.average_precision_from_scores(relevant, scores) == pytest.approx(
        average_precision_score(relevant, scores), abs=1e-12)


def test_pr_curve_over_k_matches_torchmetrics_at_each_k():
    scores, ql, gl = random_problem(7)
    _, rel, n_rel = ranked(scores, ql, gl)
    curve = M.precision_recall_over_k(rel, n_rel)
    assert len(curve["k"]) == rel.shape[1]
    for k in (1, 3, 17, 80):
        assert curve["precision"][k - 1] == pytest.approx(
            torchmetric(RetrievalPrecision(top_k=k), scores, ql, gl), abs=1e-6)
        assert curve["recall"][k - 1] == pytest.approx(
            torchmetric(RetrievalRecall(top_k=k), scores, ql, gl), abs=1e-6)
    assert curve["recall"][-1] == pytest.approx(1.0)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_pr_curve_over_thresholds_matches_direct_set_computation(higher_is_better):
    scores, ql, gl = random_problem(11)
    if not higher_is_better:
        scores = -scores  # distances
    order = np.argsort(-scores if higher_is_better else scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    rel = M.relevance_matrix(order, ql, gl)
    n_rel = (gl[None, :] == ql[:, None]).sum(axis=1)
    thresholds = np.linspace(scores.min() - 0.1, scores.max() + 0.1, 23)
    curve = M.precision_recall_over_thresholds(sorted_scores, rel, n_rel, thresholds, higher_is_better)
    for i, t in enumerate(thresholds):
        p, r, f = [], [], []
        for q in range(len(scores)):
            chosen = scores[q] >= t if higher_is_better else scores[q] <= t
            relevant = gl == ql[q]
            tp = np.sum(chosen & relevant)
            pq = tp / chosen.sum() if chosen.sum() else 0.0
            rq = tp / relevant.sum()
            p.append(pq)
            r.append(rq)
            f.append(2 * pq * rq / (pq + rq) if pq + rq else 0.0)
        assert curve["precision"][i] == pytest.approx(np.mean(p))
        assert curve["recall"][i] == pytest.approx(np.mean(r))
        assert curve["f1"][i] == pytest.approx(np.mean(f))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_r_precision_mrr_and_ndcg_match_torchmetrics(seed):
    from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRPrecision

    rng = np.random.default_rng(seed)
    n_q, n_g, k = 30, 60, 10
    scores = rng.normal(size=(n_q, n_g))
    target = rng.random((n_q, n_g)) < 0.15
    target[np.arange(n_q), rng.integers(0, n_g, n_q)] = True      # every query has a relevant item
    order = np.argsort(-scores, axis=1, kind="stable")
    rel = np.take_along_axis(target, order, axis=1)
    n_relevant = target.sum(axis=1)
    preds, tgt = torch.tensor(scores.ravel()), torch.tensor(target.ravel())
    indexes = torch.arange(n_q).repeat_interleave(n_g)
    assert np.nanmean(M.r_precisions(rel, n_relevant)) == pytest.approx(
        float(RetrievalRPrecision()(preds, tgt, indexes=indexes)), abs=1e-6)
    assert np.nanmean(M.reciprocal_ranks(rel, n_relevant)) == pytest.approx(
        float(RetrievalMRR()(preds, tgt, indexes=indexes)), abs=1e-6)
    assert np.nanmean(M.ndcg_at_k(rel, n_relevant, k)) == pytest.approx(
        float(RetrievalNormalizedDCG(top_k=k)(preds, tgt, indexes=indexes)), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_map_at_r_and_r_precision_match_pytorch_metric_learning(seed):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, 200)
    x = rng.normal(size=(200, 16)) + 1.5 * np.eye(16)[labels]
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q, g, q_labels, g_labels = x[:50], x[50:], labels[:50], labels[50:]
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    rel = M.relevance_matrix(order, q_labels, g_labels)
    n_relevant = (q_labels[:, None] == g_labels[None, :]).sum(axis=1)
    reference = AccuracyCalculator(include=("mean_average_precision_at_r", "r_precision"), k="max_bin_count",
                                   device=torch.device("cpu")).get_accuracy(
        torch.tensor(q), torch.tensor(q_labels), torch.tensor(g), torch.tensor(g_labels), ref_includes_query=False)
    assert np.nanmean(M.map_at_r_values(rel, n_relevant)) == pytest.approx(
        reference["mean_average_precision_at_r"], abs=1e-6)
    assert np.nanmean(M.r_precisions(rel, n_relevant)) == pytest.approx(reference["r_precision"], abs=1e-6)


def test_extra_metrics_skip_queries_without_relevant_items_and_read_truncated_rankings():
    rel = np.array([[0, 1, 0], [0, 0, 0], [1, 1, 0]], bool)
    extras = M.ranking_extras(rel, np.array([2, 0, 5]), k=3)       # query 2 has 5 relevant, 3 shown
    assert np.isnan(extras["MRR"][1]) and extras["MRR"][0] == 0.5 and extras["MRR"][2] == 1.0
    assert extras["R-precision"][0] == 0.5 and extras["R-precision"][2] == pytest.approx(2 / 5)
    assert extras["MAP@R"][2] == pytest.approx((1 + 1) / 5)
