"""Static and dynamic (per-gallery) thresholds, hand-computed examples and calibration."""
from __future__ import annotations

import numpy as np
import pytest

from cbir_kit.errors import CbirError
from cbir_kit.threshold.rules import (DynamicThreshold, StaticThreshold, calibrate, calibration_split, gallery_means,
                                retrieval_metrics)

DIST = np.array([[0.1, 0.4, 0.5, 0.9],
                 [0.6, 0.7, 0.8, 1.2]])
REL = np.array([[1, 1, 0, 0],
                [1, 1, 1, 0]], bool)


def test_static_by_hand():
    mask = StaticThreshold(T=0.65).retrieve(DIST)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    m = retrieval_metrics(mask, REL)
    # query 0: P 2/3 R 1 F1 0.8; query 1: P 1 R 1/3 F1 0.5
    assert m["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["recall"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["f1"] == pytest.approx((0.8 + 0.5) / 2)


def test_dynamic_by_hand_one_gallery_per_query():
    # n = 2: mu_0 = (0.1 + 0.4) / 2 = 0.25, mu_1 = (0.6 + 0.7) / 2 = 0.65, mu = 0.45
    # w = 1, T = 0.5: T_0 = 0.5 - 0.2 = 0.3, T_1 = 0.5 + 0.2 = 0.7
    th = DynamicThreshold(T=0.5, w=1.0, n=2)
    np.testing.assert_allclose(th.thresholds(DIST), [[0.3] * 4, [0.7] * 4])
    np.testing.assert_array_equal(th.retrieve(DIST), [[1, 0, 0, 0], [1, 0, 0, 0]])
    # a fixed mu (from a calibration split) replaces the batch mean
    np.testing.assert_allclose(DynamicThreshold(T=0.5, w=1.0, n=2, mu=0.25).thresholds(DIST)[:, 0], [0.5, 0.9])


def test_dynamic_by_hand_explicit_galleries():
    groups = np.array(["a", "a", "b", "b"])
    means, gid = gallery_means(DIST, n=1, groups=groups)
    np.testing.assert_allclose(means, [[0.1, 0.5], [0.6, 0.8]])
    np.testing.assert_array_equal(gid, [0, 0, 1, 1])
    th = DynamicThreshold(T=0.5, w=0.5, n=1).thresholds(DIST, groups)
    mu = means.mean()  # 0.5
    expected = 0.5 + 0.5 * (means - mu)
    np.testing.assert_allclose(th, expected[:, [0, 0, 1, 1]])


def test_zero_weight_is_static():
    rng = np.random.default_rng(0)
    d = rng.random((5, 30))
    np.testing.assert_array_equal(DynamicThreshold(T=0.4, w=0.0, n=3).retrieve(d), StaticThreshold(0.4).retrieve(d))


def test_static_calibration_matches_brute_force():
    rng = np.random.default_rng(1)
    labels_q, labels_g = rng.integers(0, 3, 12), rng.integers(0, 3, 40)
    rel = labels_q[:, None] == labels_g[None, :]
    d = rng.random((12, 40)) + 0.5 * ~rel
    fitted = calibrate(d, rel, "static", n_grid=50)
    grid = np.unique(np.quantile(d, np.linspace(0, 1, 50)))
    f1s = [retrieval_metrics(d < t, rel)["f1"] for t in grid]
    assert fitted.calibration_f1 == pytest.approx(max(f1s))
    assert fitted.T == pytest.approx(grid[int(np.argmax(f1s))])


def synthetic_varying_difficulty(n_q, seed):
    """Each query's distances are shifted by its own offset: what the dynamic threshold corrects."""
    rng = np.random.default_rng(seed)
    labels_g = np.repeat(np.arange(10), 30)
    labels_q = rng.integers(0, 10, n_q)
    rel = labels_q[:, None] == labels_g[None, :]
    d = 0.6 + 0.3 * ~rel + 0.08 * rng.normal(size=rel.shape) + rng.uniform(-0.3, 0.3, (n_q, 1))
    return d, rel


def test_dynamic_beats_static_on_held_out_synthetic():
    d, rel = synthetic_varying_difficulty(80, 0)
    cal, ev = calibration_split(len(d), 0.5, seed=0)
    static = calibrate(d[cal], rel[cal], "static")
    dynamic = calibrate(d[cal], rel[cal], "dynamic")
    assert dynamic.calibration_f1 >= static.calibration_f1
    assert retrieval_metrics(dynamic.retrieve(d[ev]), rel[ev])["f1"] > \
        retrieval_metrics(static.retrieve(d[ev]), rel[ev])["f1"] + 0.05


def test_dynamic_at_least_static_on_corel_held_out(corel_features):
    from cbir_kit.rerank import euclidean_distances

    q, g, ds = corel_features
    d = euclidean_distances(q, g)
    rel = ds.query_labels[:, None] == ds.gallery_labels[None, :]
    cal, ev = calibration_split(len(q), 0.5, seed=0)
    static = calibrate(d[cal], rel[cal], "static")
    dynamic = calibrate(d[cal], rel[cal], "dynamic")
    assert set(np.intersect1d(cal, ev)) == set()
    assert retrieval_metrics(dynamic.retrieve(d[ev]), rel[ev])["f1"] >= \
        retrieval_metrics(static.retrieve(d[ev]), rel[ev])["f1"]


def test_split_and_errors():
    cal, ev = calibration_split(10, 0.3, seed=4)
    assert len(cal) == 3 and len(ev) == 7 and not set(cal) & set(ev)
    np.testing.assert_array_equal(calibration_split(10, 0.3, seed=4)[0], cal)
    with pytest.raises(CbirError):
        calibration_split(1, 0.5)
    with pytest.raises(CbirError, match="static or dynamic"):
        calibrate(DIST, REL, "median")
    with pytest.raises(CbirError, match="groups"):
        gallery_means(DIST, 1, groups=[0, 1])
    with pytest.raises(CbirError, match="n >= 1"):
        gallery_means(DIST, 0)
