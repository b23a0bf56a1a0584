"""Exact search: faiss Flat wrapper against the numpy reference, and its errors."""
import numpy as np
import pytest

from cbir_kit.errors import CbirError
from cbir_kit.index import AnnIndex, ExactIndex, HashIndex, ITQHasher, numpy_search
from cbir_kit.index.exact import without_own


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


def _with_duplicates(seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.vstack([x, np.repeat(x[:1], 5, axis=0), np.repeat(x[1:2], 2, axis=0)])  # 6 and 3 identical rows


@pytest.mark.parametrize("make", [lambda: ExactIndex("ip"), lambda: AnnIndex("Flat"), lambda: AnnIndex("HNSW16"),
                                  lambda: HashIndex(ITQHasher(8, seed=0), shortlist=47)])
def test_leave_one_out_search_equals_sklearn_kneighbors_without_x(make):
    """Every index's search(own_ids=...) returns what NearestNeighbors.kneighbors(X=None) returns, duplicates included."""
    from sklearn.neighbors import NearestNeighbors

    x, k = _with_duplicates(), 4
    ref_dist, ref_ids = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors()
    scores, ids = make().fit(x).search(x, k, own_ids=np.arange(len(x)))
    dist = np.sqrt(np.maximum(2.0 - 2.0 * scores.astype(np.float64), 0.0))
    assert ids.shape == ref_ids.shape
    assert not (ids == np.arange(len(x))[:, None]).any()
    np.testing.assert_allclose(dist, ref_dist, atol=2e-3)
    copy_of = np.r_[np.arange(40), [0] * 5, [1] * 2]     # identical rows stand for one another
    clear = np.abs(np.diff(ref_dist, axis=1)).min(axis=1) > 1e-2   # rows without near ties: the same ranking
    assert (copy_of[ids[clear]] == copy_of[ref_ids[clear]]).all()


def test_without_own_drops_the_last_entry_when_a_row_lacks_its_own_id():
    ids = np.array([[5, 0, 7], [3, 4, 1]])          # row 0's own id 0 is at rank 1
    scores = np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 0.9]])
    kept_scores, kept_ids = without_own(scores, ids, [0, 2])   # query 1's own id 2 is absent: drop the last
    assert kept_ids.tolist() == [[5, 7], [3, 4]]
    assert kept_scores.tolist() == [[1.0, 0.5], [1.0, 1.0]]


def test_an_approximate_index_that_misses_the_query_keeps_its_best_results():
    x = _with_duplicates()
    index = HashIndex(ITQHasher(8, seed=0), shortlist=3).fit(x)
    own = np.arange(len(x))
    full_scores, full_ids = index.search(x, 3)
    scores, ids = index.search(x, 2, own_ids=own)
    missed = ~(full_ids == own[:, None]).any(axis=1)
    assert (ids[missed] == full_ids[missed, :2]).all()


@pytest.mark.parametrize("make", [lambda: ExactIndex("ip"), lambda: AnnIndex("Flat"), lambda: AnnIndex("IVF2,Flat"),
                                  lambda: HashIndex(ITQHasher(8, seed=0), shortlist=47)])
def test_every_index_orders_tied_scores_by_the_lower_gallery_id(make):
    x = _with_duplicates()                                   # rows 0 and 40-44 are one vector, 1 and 45-46 another
    rng = np.random.default_rng(1)
    order = rng.permutation(len(x))
    gallery = x[order]                                        # the copies sit at scattered ids
    index = make().fit(gallery)
    if isinstance(index, AnnIndex) and index.factory.startswith("IVF"):
        index.index_.nprobe = 2                               # both lists: every item is scored
    scores, ids = index.search(x[:2], len(gallery))
    ref_scores, ref_ids = numpy_search(x[:2], gallery, len(gallery))
    assert (ids == ref_ids).all()                             # the numpy reference: a stable sort by score
    for row, score_row in zip(ids, scores):
        for value in np.unique(score_row):
            tied = row[score_row == value]
            assert (np.diff(tied) > 0).all()


@pytest.mark.parametrize("k", [1, 2, 5, 41, 47])
@pytest.mark.parametrize("make", [lambda: ExactIndex("ip"), lambda: AnnIndex("Flat"), lambda: ExactIndex("l2")])
def test_a_cut_through_tied_scores_keeps_the_lower_ids(make, k):
    """The exact top k is the first k of numpy's stable full ranking, also when tied copies straddle the cut.

    Query 0 has six identical gallery rows, all scoring the maximum: k = 1, 2 and 5 cut through that tie."""
    x = _with_duplicates()
    gallery = x[np.random.default_rng(2).permutation(len(x))]
    index = make().fit(gallery)
    queries = x[:2]
    scores, ids = index.search(queries, k)
    ref_scores, ref_ids = numpy_search(queries, gallery, len(gallery), metric=getattr(index, "metric", "ip"))
    assert (ref_scores[0, :6] == ref_scores[0, 0]).all() and ref_scores[0, 6] != ref_scores[0, 0]
    np.testing.assert_array_equal(ids, ref_ids[:, :k])
    np.testing.assert_allclose(scores[:, -1], ref_scores[:, k - 1], atol=1e-5)
