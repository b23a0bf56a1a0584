"""Property-based tests (hypothesis): metric and search invariants, re-ranking, image-loader fuzzing."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from sklearn.metrics import average_precision_score

from cbir_kit.evaluation import metrics as M
from cbir_kit.datasets.images import ImageLoadError, open_image
from cbir_kit.index import ExactIndex
from cbir_kit.index.exact import numpy_search
from cbir_kit.rerank import k_reciprocal_rerank, k_reciprocal_rerank_features, query_expansion
from cbir_kit.rerank.kreciprocal import euclidean_distances

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

relevance_rows = arrays(bool, st.integers(1, 40))


@FAST
@given(relevance_rows, st.integers(0, 10))
def test_ap_lies_in_0_1(rel, extra_relevant):
    r = int(rel.sum()) + extra_relevant  # relevant items may be missing from the ranking
    ap = M.average_precision(rel, r)
    if r == 0:
        assert np.isnan(ap)
    else:
        assert 0.0 <= ap <= 1.0


@FAST
@given(st.integers(1, 30), st.integers(0, 30))
def test_ap_is_1_for_a_perfect_ranking_and_below_1_otherwise(n_rel, n_irrel):
    perfect = np.r_[np.ones(n_rel, bool), np.zeros(n_irrel, bool)]
    assert M.average_precision(perfect, n_rel) == pytest.approx(1.0)
    if n_irrel:
        worse = np.r_[np.zeros(1, bool), np.ones(n_rel, bool), np.zeros(n_irrel - 1, bool)]
        assert M.average_precision(worse, n_rel) < 1.0


@FAST
@given(arrays(bool, st.integers(2, 40)), st.randoms(use_true_random=False))
def test_ap_of_a_full_ranking_equals_scikit_learn(rel, rnd):
    if not rel.any():
        return
    scores = np.array(rnd.sample(range(10 * len(rel)), len(rel)), dtype=float)  # distinct scores
    ranked = rel[np.argsort(-scores)]
    assert M.average_precision(ranked, int(rel.sum())) == pytest.approx(average_precision_score(rel, scores))


@FAST
@given(arrays(bool, st.tuples(st.integers(1, 6), st.integers(1, 25))))
def test_precision_and_recall_at_k_bounds_and_monotone_recall(rel):
    n_relevant = rel.sum(axis=1) + 1
    recalls = [M.recall_at_k(rel, n_relevant, k) for k in range(1, rel.shape[1] + 1)]
    assert all(0 <= M.precision_at_k(rel, k) <= 1 for k in range(1, rel.shape[1] + 1))
    assert all(a <= b + 1e-12 for a, b in zip(recalls, recalls[1:]))


def _matrices(max_rows=30, max_dim=12):
    finite = st.floats(-4, 4, allow_nan=False, width=32)
    return st.integers(1, max_dim).flatmap(lambda d: st.tuples(
        arrays(np.float32, st.tuples(st.integers(1, 8), st.just(d)), elements=finite),
        arrays(np.float32, st.tuples(st.integers(1, max_rows), st.just(d)), elements=finite)))


@FAST
@given(_matrices(), st.integers(1, 40), st.sampled_from(["ip", "l2"]))
def test_exact_faiss_search_matches_numpy_brute_force(qg, k, metric):
    queries, gallery = qg
    scores, ids = ExactIndex(metric).fit(gallery).search(queries, k)
    ref_scores, _ = numpy_search(queries, gallery, k, metric)
    assert ids.shape == (len(queries), min(k, len(gallery)))
    tol = 1e-3 * (1 + np.abs(ref_scores).max())
    np.testing.assert_allclose(scores, ref_scores, atol=tol)
    sim = queries.astype(np.float64) @ gallery.astype(np.float64).T
    if metric == "l2":
        sim = -((queries[:, None, :].astype(np.float64) - gallery[None]) ** 2).sum(-1)
    for q in range(len(queries)):  # faiss's ids are a valid top-k (ties may be ordered differently)
        assert len(set(ids[q])) == ids.shape[1]
        np.testing.assert_allclose(np.sort(sim[q, ids[q]])[::-1], np.sort(sim[q])[::-1][:ids.shape[1]], atol=tol)


def _unit_rows(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(4, 25), st.integers(2, 8), st.integers(0, 10_000),
       st.integers(1, 6), st.integers(1, 4), st.floats(0, 1))
def test_k_reciprocal_reranking_gives_a_permutation_and_both_paths_agree(n_q, n_g, d, seed, k1, k2, lam):
    k1 = min(k1, n_q + n_g - 1)   # k1 neighbours need more than k1 items (a smaller set is an error, tested elsewhere)
    q, g = _unit_rows(n_q, d, seed), _unit_rows(n_g, d, seed + 1)
    dense = k_reciprocal_rerank(euclidean_distances(q, g), euclidean_distances(q, q), euclidean_distances(g, g),
                                k1=k1, k2=k2, lambda_value=lam)
    streamed = k_reciprocal_rerank_features(q, g, k1=k1, k2=k2, lambda_value=lam, chunk=3)
    assert dense.shape == (n_q, n_g) and np.isfinite(dense).all()
    np.testing.assert_allclose(streamed, dense, atol=1e-5)
    order = np.argsort(dense, axis=1, kind="stable")
    assert (np.sort(order, axis=1) == np.arange(n_g)).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(3, 20), st.integers(2, 8), st.integers(0, 10_000), st.floats(0, 4))
def test_query_expansion_keeps_unit_vectors_and_search_stays_a_permutation(n_q, n_g, d, seed, alpha):
    q, g = _unit_rows(n_q, d, seed), _unit_rows(n_g, d, seed + 7)
    expanded = query_expansion(q, g, n=min(3, n_g), alpha=alpha)
    np.testing.assert_allclose(np.linalg.norm(expanded, axis=1), 1.0, atol=1e-5)
    _, ids = ExactIndex().fit(g).search(expanded, n_g)
    assert (np.sort(ids, axis=1) == np.arange(n_g)).all()


# ---------------------------------------------------------------- image loader fuzzing

def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {"JPEG": _encoded("JPEG"), "PNG": _encoded("PNG")}
edits = st.lists(st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, 10_000),
                           st.integers(0, 255)), min_size=1, max_size=8)


def _mutate(data: bytes, ops, cut: int | None) -> bytes:
    out = bytearray(data)
    for op, pos, value in ops:
        if not out:
            break
        pos %= len(out)
        if op == "set":
            out[pos] = value
        elif op == "insert":
            out.insert(pos, value)
        else:
            del out[pos]
    return bytes(out[:cut] if cut is not None else out)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SEEDS)), edits, st.one_of(st.none(), st.integers(0, 2000)))
def test_open_image_on_corrupted_bytes_returns_rgb_or_raises_image_load_error(fmt, ops, cut):
    data = _mutate(SEEDS[fmt], ops, cut)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz.{fmt.lower()}"
        path.write_bytes(data)
        try:
            img = open_image(path)
        except ImageLoadError as err:
            assert str(path) in str(err)
        else:
            assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size[0] > 0
