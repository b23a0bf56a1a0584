"""The binary-hash course project's @k variants, on examples computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from cbir_kit.evaluation import metrics as M


def test_ap_at_k_over_k_worked_example():
    rel = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 1]], bool)
    # query 0: P@1 = 1, P@3 = 2/3, P@4 = 3/4 -> (1 + 2/3 + 3/4) / 5
    # query 1: P@5 = 1/5 -> (1/5) / 5
    expect = np.array([(1 + 2 / 3 + 3 / 4) / 5, (1 / 5) / 5])
    np.testing.assert_allclose(M.ap_at_k_over_k(rel, 5), expect)
    assert M.ap_at_k_over_k(rel, 3)[0] == pytest.approx((1 + 2 / 3) / 3)
    assert M.map_at_k_over_k(rel, 5) == pytest.approx(expect.mean())
    # with 2 relevant items only, AP@5/5 can never reach 1 even for a perfect ranking
    assert M.ap_at_k_over_k(np.array([[1, 1, 0, 0, 0]], bool), 5)[0] == pytest.approx(2 / 5)


COARSE = [0, 0, 1, 1, 2, 2]  # fine label -> superclass


def test_hierarchy_similarity():
    sim = M.hierarchy_similarity(0, np.array([0, 1, 2, 3, 4, 5]), COARSE)
    np.testing.assert_allclose(sim, [1, 0.5, 0, 0, 0, 0])
    as_dict = M.hierarchy_similarity(0, np.array([0, 1, 2]), dict(enumerate(COARSE)))
    np.testing.assert_allclose(as_dict, [1, 0.5, 0])


def test_ahp_at_k_worked_example():
    gallery_labels = np.array([0, 1, 2, 0, 4, 1])  # sims to a class-0 query: 1 .5 0 1 0 .5
    ranking = np.array([[2, 0, 1, 3, 5, 4]])       # gains 0 1 .5 1 .5 0
    gains, ideal = M.hierarchical_gains(ranking, np.array([0]), gallery_labels, COARSE)
    np.testing.assert_allclose(gains[0], [0, 1, 0.5, 1, 0.5, 0])
    np.testing.assert_allclose(ideal[0], [1, 1, 0.5, 0.5, 0, 0])
    # HP@1..5 = 0/1, 1/2, 1.5/2.5, 2.5/3, 3/3
    hp = [0, 0.5, 0.6, 2.5 / 3, 1.0]
    assert M.ahp_at_k(gains, ideal, 3)[0] == pytest.approx(sum(hp[:3]) / 3)
    assert M.ahp_at_k(gains, ideal, 5)[0] == pytest.approx(sum(hp) / 5)
    assert M.mahp_at_k(gains, ideal, 5) == pytest.approx(sum(hp) / 5)


def test_ahp_leave_one_out_excludes_the_query_from_the_ideal_list():
    gallery_labels = np.array([0, 1, 2, 0, 4, 1])
    ranking = np.array([[2, 1, 3, 5, 4]])  # query is gallery item 0, not in its own ranking
    gains, ideal = M.hierarchical_gains(ranking, np.array([0]), gallery_labels, COARSE, exclude=np.array([0]))
    np.testing.assert_allclose(ideal[0], [1, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(gains[0], [0, 0.5, 1, 0.5, 0])
    # HP@1..3 = 0/1, .5/1.5, 1.5/2
    assert M.ahp_at_k(gains, ideal, 3)[0] == pytest.approx((0 + 1 / 3 + 0.75) / 3)


def test_perfect_ranking_has_ahp_one_and_nothing_similar_is_nan():
    gallery_labels = np.array([0, 1, 2, 0, 4, 1])
    best = np.array([[0, 3, 1, 5, 2, 4]])
    gains, ideal = M.hierarchical_gains(best, np.array([0]), gallery_labels, COARSE)
    assert M.ahp_at_k(gains, ideal, 6)[0] == pytest.approx(1.0)
    gains, ideal = M.hierarchical_gains(np.array([[0, 1]]), np.array([4]), np.array([0, 1]), COARSE)
    assert np.isnan(M.ahp_at_k(gains, ideal, 2)[0])
    assert np.isnan(M.mahp_at_k(gains, ideal, 2))


def test_on_an_unbalanced_gallery_only_the_gallerys_own_ideal_gives_a_perfect_ranking_ahp_one():
    """Why cbir_kit's ideal and the hash project's 100-per-class ideal differ, and which is right."""
    coarse_of = {"cat": "animal", "dog": "animal", "car": "vehicle"}
    gallery = np.array(["cat"] * 60 + ["dog"] * 140 + ["car"] * 100)
    for query in ("cat", "dog"):
        sims = M.hierarchy_similarity(query, gallery, coarse_of)
        perfect = np.argsort(-sims, kind="stable")[None, :250]        # the best possible ranking
        gains, ideal = M.hierarchical_gains(perfect, np.array([query]), gallery, coarse_of)
        assert M.ahp_at_k(gains, ideal, 250)[0] == pytest.approx(1.0)
        assumed = np.r_[np.ones(100), np.full(150, 0.5)][None, :]      # "100 images per class"
        wrong = M.ahp_at_k(gains, assumed, 250)[0]
        assert (wrong < 1.0) if query == "cat" else (wrong > 1.0)     # too strict for cat, above 1 for dog
