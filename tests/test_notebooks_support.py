"""The library parts the notebooks stand on: the CBIR_PROFILE switch and the explorer."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cbir_kit.datasets import Dataset, DatasetError
from cbir_kit.report.explorer import Explorer, ranker, relevance
from cbir_kit.pipeline.profile import PROFILES, cap_per_class, get_profile, load_dataset


def tiny_dataset(n_gallery=12, n_query=4, leave_one_out=False):
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 255, size=(n_gallery, 3))
    gallery = [Image.new("RGB", (20, 16), tuple(int(v) for v in c)) for c in colours]
    g_labels = np.arange(n_gallery) % 3
    if leave_one_out:
        return Dataset("tiny", gallery, gallery, g_labels, g_labels, leave_one_out=True)
    query = gallery[:n_query]
    return Dataset("tiny", query, gallery, g_labels[:n_query], g_labels)


def unit_rows(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_profile_switch(monkeypatch):
    monkeypatch.setenv("CBIR_PROFILE", "ci")
    assert get_profile().name == "ci" and get_profile().offline
    assert set(get_profile().datasets.values()) <= {"demo", "digits"}  # offline datasets only
    monkeypatch.delenv("CBIR_PROFILE")
    assert get_profile().name == "full"
    assert set(PROFILES["ci"].datasets) == set(PROFILES["full"].datasets)
    with pytest.raises(DatasetError, match="CBIR_PROFILE='nope'"):
        get_profile("nope")


def test_cap_per_class_keeps_at_most_n_per_label():
    ds = tiny_dataset(n_gallery=30)
    capped = cap_per_class(ds, 4)
    _, counts = np.unique(capped.gallery_labels, return_counts=True)
    assert counts.tolist() == [4, 4, 4]
    assert capped.n_queries == ds.n_queries
    assert cap_per_class(ds, 4).gallery_labels.tolist() == capped.gallery_labels.tolist()  # seeded
    loo = cap_per_class(tiny_dataset(n_gallery=30, leave_one_out=True), 2)
    assert loo.n_queries == loo.n_gallery == 6
    assert cap_per_class(ds, None) is ds


def test_missing_dataset_error_names_the_fix(monkeypatch, tmp_path):
    from cbir_kit.pipeline.profile import Profile
    p = Profile(name="full", datasets={"classes": "no-such-dataset"})
    with pytest.raises(DatasetError, match="CBIR_PROFILE=ci"):
        load_dataset("classes", p, root=tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset role"):
        load_dataset("colours", p)


def test_ranker_matches_brute_force_and_drops_self():
    q, g = unit_rows(4, 8, 1), unit_rows(12, 8, 2)
    scores, ids = ranker(q, g)(2)
    expected = np.argsort(-(g @ q[2]), kind="stable")
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, (g @ q[2])[expected], rtol=1e-5)
    scores, ids = ranker(g, g, leave_one_out=True)(5)
    assert 5 not in ids.tolist() and len(ids) == 11
    assert len(ranker(q, g, depth=3)(0)[1]) == 3


def test_relevance_by_label_and_by_revisitop_lists():
    ds = tiny_dataset()
    assert relevance(ds, 1, [1, 2, 4]) == ["relevant", "irrelevant", "relevant"]
    ds.gnd = [{"ok": [3], "junk": [5]}] * ds.n_queries
    assert relevance(ds, 0, [3, 5, 7]) == ["relevant", "junk", "irrelevant"]


def test_explorer_selects_topk_or_threshold_and_draws():
    import matplotlib
    matplotlib.use("Agg")
    ds = tiny_dataset()
    q = unit_rows(4, 8, 1)
    g = unit_rows(12, 8, 2)
    ex = Explorer(ds, {"exact": ranker(q, g)}, k=3, max_show=5)
    scores, ids = ex.select(0, "exact", k=4)
    assert len(ids) == 4 and np.all(np.diff(scores) <= 0)
    scores, ids = ex.select(0, "exact", threshold=0.0)
    assert len(ids) == int(np.sum(g @ q[0] >= 0.0)) and np.all(scores >= 0.0)
    fig = ex.draw(0, threshold=0.0)
    shown = [ax for ax in fig.axes if ax.images][1:]  # first image is the query
    assert len(shown) == min(5, len(ids))
    assert "precision" in fig._suptitle.get_text()
    fig = ex.draw(1, threshold=2.0)  # nothing passes
    assert "0 retrieved" in fig._suptitle.get_text()


def test_explorer_widget_builds_and_redraws():
    pytest.importorskip("ipywidgets")
    import matplotlib
    matplotlib.use("Agg")
    ds = tiny_dataset()
    ex = Explorer(ds, {"a": ranker(unit_rows(4, 8, 1), unit_rows(12, 8, 2)),
                       "b": ranker(unit_rows(4, 8, 3), unit_rows(12, 8, 2))})
    panel = ex.widget()
    assert "cbir-explorer" in panel._dom_classes
    (query, method), (mode, k, thr) = panel.children[0].children, panel.children[1].children
    method.value = "b"
    mode.value = "threshold"
    assert k.layout.display == "none" and thr.layout.display is None
    query.value = 3
