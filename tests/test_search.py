"""Exact search: faiss Flat wrapper against the numpy reference, and its errors."""
import numpy as np
import pytest

from cbir_kit.errors import CbirError
from cbir_kit.index import ExactIndex, numpy_search


def _normalised(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_matches_numpy_reference(metric):
    rng = np.random.default_rng(0)
    gallery, queries = _normalised(rng, 500, 32), _normalised(rng, 40, 32)
    scores, ids = ExactIndex(metric).fit(gallery).search(queries, 25)
    ref_scores, ref_ids = numpy_search(queries, gallery, 25, metric)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_full_ranking_is_a_permutation_sorted_by_score():
    rng = np.random.default_rng(1)
    gallery, queries = _normalised(rng, 100, 8), _normalised(rng, 5, 8)
    scores, ids = ExactIndex().fit(gallery).search(queries, 100)
    for query, row_scores, row_ids in zip(queries, scores, ids):
        assert sorted(row_ids) == list(range(100))
        assert np.all(np.diff(row_scores) <= 1e-6)
        np.testing.assert_allclose(row_scores, gallery[row_ids] @ query, atol=1e-5)


def test_k_larger_than_gallery_is_clipped():
    rng = np.random.default_rng(2)
    gallery = _normalised(rng, 7, 4)
    _, ids = ExactIndex().fit(gallery).search(gallery[:2], 50)
    assert ids.shape == (2, 7)
    assert ids[0, 0] == 0 and ids[1, 0] == 1  # each vector is its own nearest neighbour


def test_errors_are_clear():
    rng = np.random.default_rng(3)
    with pytest.raises(CbirError, match="before fit"):
        ExactIndex().search(_normalised(rng, 2, 4), 1)
    index = ExactIndex().fit(_normalised(rng, 10, 4))
    with pytest.raises(CbirError, match="dimension 8 but the gallery has 4"):
        index.search(_normalised(rng, 2, 8), 1)
    bad = _normalised(rng, 3, 4)
    bad[1, 2] = np.nan
    with pytest.raises(CbirError, match=r"NaN or infinite values in rows \[1\]"):
        index.search(bad, 1)
    with pytest.raises(CbirError, match="at least 1"):
        index.search(_normalised(rng, 2, 4), 0)
    with pytest.raises(CbirError, match="metric"):
        ExactIndex("cosine")
