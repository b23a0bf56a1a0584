"""Binary hash codes, Hamming search (faiss vs numpy popcount), shortlist + float re-rank."""
from __future__ import annotations

import numpy as np
import pytest

from cbir_kit.errors import CbirError
from cbir_kit.method_specs import HASH_METHODS
from cbir_kit.index import ExactIndex
from cbir_kit.index.hashing import (
    HashIndex,
    ITQHasher,
    LSHHasher,
    PCAHasher,
    hamming_distances,
    hamming_search_faiss,
    hamming_search_numpy,
    HASHERS,
    make_hasher,
    shortlist_recall,
)

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 48))
    g = centres[rng.integers(0, 10, 600)] + 0.5 * rng.normal(size=(600, 48))
    q = centres[rng.integers(0, 10, 25)] + 0.5 * rng.normal(size=(25, 48))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(q), unit(g)


@pytest.mark.parametrize("hasher", [LSHHasher(24), PCAHasher(32), ITQHasher(16, n_iter=20)])
def test_codes_are_packed_sign_bits(data, hasher):
    q, g = data
    codes = hasher.fit(g).transform(g)
    assert codes.dtype == np.uint8 and codes.shape == (len(g), hasher.bits // 8)
    bits = (hasher._project(g) > 0).astype(np.uint8)
    np.testing.assert_array_equal(np.unpackbits(codes, axis=1), bits)
    assert hasher.mean_.shape == (48,) and hasher.projection_.shape == (48, hasher.bits)


def test_faiss_hamming_equals_numpy_popcount(data):
    q, g = data
    h = ITQHasher(32).fit(g)
    qc, gc = h.transform(q), h.transform(g)
    d_faiss, i_faiss = hamming_search_faiss(qc, gc, 50)
    d_np, i_np = hamming_search_numpy(qc, gc, 50)
    np.testing.assert_array_equal(d_faiss, d_np)
    np.testing.assert_array_equal(i_faiss, i_np)          # the tie rule, at the cut too: lower ids first
    full = hamming_distances(qc, gc)
    np.testing.assert_array_equal(np.take_along_axis(full, i_faiss, axis=1), d_faiss)
    # independent bit-level count on the unpacked codes
    ub_q, ub_g = np.unpackbits(qc, axis=1), np.unpackbits(gc, axis=1)
    np.testing.assert_array_equal(full, (ub_q[:, None, :] != ub_g[None, :, :]).sum(axis=2))


def test_itq_is_orthogonal_and_lowers_quantisation_loss(data):
    _, g = data
    h = ITQHasher(16, n_iter=30).fit(g)
    np.testing.assert_allclose(h.rotation_ @ h.rotation_.T, np.eye(16), atol=1e-5)
    assert h.loss_[-1] <= h.loss_[0]
    assert all(b <= a + 1e-6 for a, b in zip(h.loss_, h.loss_[1:]))  # alternating minimisation


def test_pca_hasher_matches_sklearn_pca_signs(data):
    from sklearn.decomposition import PCA

    _, g = data
    h = PCAHasher(8).fit(g)
    pca = PCA(8, svd_solver="full").fit(g)
    # principal directions agree up to sign
    cos = np.abs(np.sum(h.projection_ * pca.components_.T, axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)


def test_shortlist_of_whole_gallery_equals_exact(data):
    q, g = data
    index = HashIndex(make_hasher("lsh:16"), shortlist=len(g)).fit(g)
    scores, ids = index.search(q, 10)
    exact_scores, exact_ids = ExactIndex("ip").fit(g).search(q, 10)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    assert shortlist_recall(index.shortlist_, exact_ids) == 1.0
    assert set(index.timings_) == {"encode_s", "hamming_s", "rerank_s"}


def test_default_shortlist_is_2k_and_recall_grows_with_m(data):
    q, g = data
    _, exact_ids = ExactIndex("ip").fit(g).search(q, 10)
    index = HashIndex(ITQHasher(32)).fit(g)
    index.search(q, 10)
    assert index.shortlist_.shape == (len(q), 20)
    recalls = []
    for m in (20, 80, 300):
        index.shortlist = m
        index.search(q, 10)
        recalls.append(shortlist_recall(index.shortlist_, exact_ids))
    assert recalls == sorted(recalls)


@pytest.mark.parametrize("m", [7, 20, 33])
def test_the_shortlist_is_the_first_m_codes_of_a_stable_sort_by_hamming_distance(data, m):
    """Codes tied at the m-th distance enter by the lower id; the top k is then the stable re-rank of those m."""
    q, g = data
    index = HashIndex(ITQHasher(8, seed=0), shortlist=m).fit(g)     # 8 bits over 600 codes: ties everywhere
    scores, ids = index.search(q, 5)
    dist = hamming_distances(index.hasher.transform(q), index.codes_)
    expected = np.argsort(dist, axis=1, kind="stable")[:, :m]
    assert (np.take_along_axis(dist, expected, 1)[:, -1:] == dist).sum(axis=1).min() > 1   # a tie at every cut
    np.testing.assert_array_equal(index.shortlist_, expected)
    ip = np.take_along_axis(q @ g.T, expected, 1)
    np.testing.assert_array_equal(ids, np.take_along_axis(expected, np.argsort(-ip, axis=1, kind="stable"), 1)[:, :5])


def test_bad_specs():
    for bad in ("itq:60", "foo:64", "itq", "lsh:0", "itq:-8", "ITQ:64"):
        with pytest.raises(CbirError, match=r"hash=.* must be METHOD:BITS with METHOD one of itq, lsh, pca"):
            make_hasher(bad)
    assert set(HASHERS) == set(HASH_METHODS)
    with pytest.raises(CbirError, match="at least 64"):
        PCAHasher(64).fit(np.random.default_rng(0).normal(size=(100, 16)))
    with pytest.raises(CbirError, match="not fitted"):
        ITQHasher(8).transform(np.zeros((2, 16)))


def test_corel_itq_shortlist_recall(corel_features):
    q, g, _ = corel_features
    _, exact_ids = ExactIndex("ip").fit(g).search(q, 10)
    index = HashIndex(make_hasher("itq:64"), shortlist=200).fit(g)
    index.search(q, 10)
    assert shortlist_recall(index.shortlist_, exact_ids) > 0.8
