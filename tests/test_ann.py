"""ANN indexes (faiss index_factory strings) against exact search."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from cbir_kit.errors import CbirError
from cbir_kit.index import ExactIndex
from cbir_kit.index.ann import AnnIndex, compare_to_exact, recall_vs_exact

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    g = unit(centres[rng.integers(0, 20, 1500)] + 0.4 * rng.normal(size=(1500, 32)))
    q = unit(centres[rng.integers(0, 20, 40)] + 0.4 * rng.normal(size=(40, 32)))
    return q, g


def test_flat_equals_exact(data):
    q, g = data
    _, ids = AnnIndex("Flat").fit(g).search(q, 10)
    _, exact = ExactIndex("ip").fit(g).search(q, 10)
    np.testing.assert_array_equal(ids, exact)


@pytest.mark.parametrize("factory,knobs,floor", [
    ("IVF16,Flat", {"nprobe": 16}, 0.999),   # every list scanned: exact
    ("IVF16,Flat", {"nprobe": 4}, 0.7),
    ("HNSW32", {"ef_search": 128}, 0.95),
    ("IVF16,PQ8", {"nprobe": 16}, 0.3),
])
def test_ann_recall_vs_exact(data, factory, knobs, floor):
    q, g = data
    report = compare_to_exact(AnnIndex(factory, **knobs), q, g, k=10)
    assert report["recall@10_vs_exact"] >= floor
    assert report["search_ms_per_query"] >= 0 and report["build_s"] >= 0


def test_more_probes_never_lose_recall(data):
    q, g = data
    index = AnnIndex("IVF16,Flat").fit(g)
    _, exact = ExactIndex("ip").fit(g).search(q, 10)
    recalls = []
    for nprobe in (1, 2, 4, 8, 16):
        faiss.ParameterSpace().set_index_parameter(index.index_, "nprobe", nprobe)
        recalls.append(recall_vs_exact(index.search(q, 10)[1], exact, 10))
    assert recalls == sorted(recalls) and recalls[-1] == 1.0


def test_recall_vs_exact_by_hand():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    ann = np.array([[2, 9, 0], [-1, -1, 5]])
    assert recall_vs_exact(ann, exact, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_clear_errors(data):
    q, g = data
    with pytest.raises(CbirError, match="IVF"):
        AnnIndex("IVF4096,Flat").fit(g)
    with pytest.raises(CbirError, match="index_factory"):
        AnnIndex("NotAnIndex").fit(g)
    with pytest.raises(CbirError, match="nprobe= applies to IVF"):
        AnnIndex("HNSW32", nprobe=4).fit(g)
    with pytest.raises(CbirError, match="ef_search= applies to HNSW"):
        AnnIndex("IVF16,Flat", ef_search=4).fit(g)
    with pytest.raises(CbirError, match="centroids"):
        AnnIndex("IVF4,PQ8").fit(g[:100])
    with pytest.raises(CbirError, match="before it was trained"):
        AnnIndex("IVF16,Flat").search(q, 5)
    with pytest.raises(CbirError, match="not trained"):
        AnnIndex("IVF16,Flat").add(g)


def test_corel_hnsw_recall(corel_features):
    q, g, _ = corel_features
    report = compare_to_exact(AnnIndex("HNSW32", ef_search=64), q, g, k=10)
    assert report["recall@10_vs_exact"] >= 0.95


def test_overlap_with_exact_equals_faiss_knn_intersection_measure():
    """recall@k_vs_exact and the shortlist recall are one measure: faiss.contrib's knn_intersection_measure."""
    from faiss.contrib.evaluation import knn_intersection_measure

    from cbir_kit.evaluation.metrics import overlap_with_exact
    from cbir_kit.index.hashing import shortlist_recall

    rng = np.random.default_rng(3)
    exact = np.stack([rng.permutation(50)[:10] for _ in range(30)])
    found = np.stack([rng.permutation(50)[:10] for _ in range(30)])
    reference = knn_intersection_measure(found, exact)
    assert overlap_with_exact(found, exact) == pytest.approx(reference)
    assert recall_vs_exact(np.hstack([found, found]), exact, 10) == pytest.approx(reference)
    assert shortlist_recall(found, exact) == pytest.approx(reference)
    padded = found.copy()
    padded[:, -1] = -1                                   # nothing found there: never counted
    assert overlap_with_exact(padded, exact) <= overlap_with_exact(found, exact)
