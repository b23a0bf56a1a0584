"""evaluate() reports the revisitop protocol on datasets with ground truth, and its curves."""
from __future__ import annotations

import numpy as np
import pytest

from cbir_kit.evaluation import metrics as M
from cbir_kit.evaluation import revisitop_map as RV
from cbir_kit.datasets import Dataset
from cbir_kit.errors import CbirError, CbirWarning
from cbir_kit.pipeline.job import evaluate
from cbir_kit.index.exact import numpy_search


def synthetic_gnd(ds: Dataset) -> list[dict]:
    """Per query: same-source gallery images split into easy/hard, one other image as junk."""
    gnd = []
    for q, label in enumerate(ds.query_labels):
        same = np.flatnonzero(ds.gallery_labels == label)
        other = np.flatnonzero(ds.gallery_labels != label)
        hard = same[:1] if q % 3 else same[:0]  # every third query has no hard positive
        gnd.append({"easy": same[len(hard):], "hard": hard, "junk": other[q % len(other)][None],
                    "bbx": [0, 0, 1, 1]})
    return gnd


def test_evaluate_reports_revisitop_settings(demo_features):
    q, g, ds = demo_features
    gnd = synthetic_gnd(ds)
    gds = Dataset(name="demo-gnd", query=ds.query, gallery=ds.gallery, query_labels=ds.query_labels,
                  gallery_labels=ds.gallery_labels, gnd=gnd)
    result = evaluate(gds, k=10, progress=False)
    _, ranks = numpy_search(q, g, len(g))
    expect = RV.evaluate_ranks(ranks, gnd)
    for key, value in expect.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-4), key
    assert {"mAP_easy", "mAP_medium", "mAP_hard", "mP@1_easy", "mP@10_hard"} <= set(result.metrics)
    # standard metrics use the Medium setting with junk removed
    rel = np.stack([RV.relevance_without_junk(r, e, "medium")[0] for r, e in zip(ranks, gnd)])
    n_ok = np.array([len(e["easy"]) + len(e["hard"]) for e in gnd])
    assert result.metrics["mAP"] == pytest.approx(M.mean_average_precision(rel, n_ok), abs=1e-4)
    assert result.metrics["P@5"] == pytest.approx(M.precision_at_k(rel, 5), abs=1e-6)
    assert "over_threshold" not in result.curves
    assert "mAP_easy" in result.to_dict()["metrics"]


def test_evaluate_curves_match_metrics(demo_features):
    q, g, ds = demo_features
    result = evaluate(ds, k=10, progress=False)
    scores, ranks = numpy_search(q, g, len(g))
    rel = M.relevance_matrix(ranks, ds.query_labels, ds.gallery_labels)
    n_rel = ds.n_relevant()
    over_k = result.curves["over_k"]
    ref = M.precision_recall_over_k(rel, n_rel, over_k["k"])
    np.testing.assert_allclose(over_k["precision"], ref["precision"], atol=1e-6)
    np.testing.assert_allclose(over_k["recall"], ref["recall"], atol=1e-6)
    assert over_k["recall"][-1] == pytest.approx(1.0)
    over_t = result.curves["over_threshold"]
    ref_t = M.precision_recall_over_thresholds(scores, rel, n_rel, over_t["threshold"])
    # faiss and numpy scores may differ in the last float bits; compare away from ties
    assert np.mean(np.abs(over_t["f1"] - ref_t["f1"]) < 1e-6) > 0.95
    assert "mAP_easy" not in result.metrics


def test_a_single_image_class_and_a_k_beyond_the_gallery_are_named_in_warnings(demo_features):
    _, _, ds = demo_features
    labels = ds.gallery_labels.copy()
    labels[0] = "lonely"  # the same images (cached features), one of them now a class of its own
    loo = Dataset(name="demo-loo", query=ds.gallery, gallery=ds.gallery, query_labels=labels,
                  gallery_labels=labels, leave_one_out=True)
    with pytest.warns(CbirWarning) as caught:
        result = evaluate(loo, k=1000, progress=False)
    messages = [str(w.message) for w in caught]
    n = ds.n_gallery
    assert f"k=1000 is larger than the gallery ({n} images, {n - 1} of them retrievable per query " \
           f"under leave-one-out); using {n - 1}" in messages
    assert any("demo-loo: 1 class(es) with a single image: lonely;" in m for m in messages)
    assert result.k == n - 1 and np.isnan(result.per_query_ap[0])

    query_labels = ds.query_labels.copy()
    query_labels[:2] = "unseen"
    qg = Dataset(name="demo-qg", query=ds.query, gallery=ds.gallery, query_labels=query_labels,
                 gallery_labels=ds.gallery_labels)
    with pytest.warns(CbirWarning, match="demo-qg: 1 query class\\(es\\) with no gallery image: unseen;"):
        evaluate(qg, k=5, progress=False)


def test_no_warning_when_nothing_is_adjusted(demo_features):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CbirWarning)
        evaluate("demo", k=10, progress=False)


def test_one_rule_for_queries_with_nothing_to_find_and_its_count_in_the_json(demo_features):
    _, _, ds = demo_features
    labels = ds.gallery_labels.copy()
    labels[0] = "lonely"
    loo = Dataset(name="demo-loo", query=ds.gallery, gallery=ds.gallery, query_labels=labels,
                  gallery_labels=labels, leave_one_out=True)
    with pytest.warns(CbirWarning, match="left out of every metric, or count as 0 in every one"):
        skip = evaluate(loo, k=10, progress=False)
    zero = evaluate(loo, k=10, progress=False, no_relevant="zero")
    assert skip.config["no_relevant"] == {"rule": "skip", "queries": 1} and zero.config["no_relevant"]["rule"] == "zero"
    share = (ds.n_gallery - 1) / ds.n_gallery
    for name in ("mAP", "P@1", "P@10", "R@10", "precision", "recall", "f1", "MAP@R", "MRR", "nDCG@10"):
        assert zero.metrics[name] == pytest.approx(skip.metrics[name] * share), name
    assert skip.metrics["P@10"] == pytest.approx(skip.metrics["precision"])   # top-10 precision is P@10 again
    with pytest.raises(CbirError, match="no_relevant='none' must be one of skip, zero"):
        evaluate(loo, progress=False, no_relevant="none")
