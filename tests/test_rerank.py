"""k-reciprocal re-ranking against a straightforward transcription of the published algorithm,
and query expansion / DBA against hand-written formulas and on real Corel-1K features."""
from __future__ import annotations

import numpy as np
import pytest

from cbir_kit.evaluation import metrics as M
from cbir_kit.errors import CbirError
from cbir_kit.method_specs import QESpec, parse_method
from cbir_kit.rerank import (database_augmentation, euclidean_distances, k_reciprocal_rerank,
                             k_reciprocal_rerank_features, query_expansion)


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """Zhong et al. (CVPR 2017), step by step with loops, written from the paper's description
    (SOURCES.md section 5): no sparse tricks, a full argsort per row, an explicit Jaccard sum."""
    original = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                               np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    original = np.power(original, 2).astype(np.float32)
    original = np.transpose(original / np.max(original, axis=0))
    n_query = q_g_dist.shape[0]
    n_all = original.shape[0]
    V = np.zeros_like(original, dtype=np.float32)
    initial_rank = np.argsort(original, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = initial_rank[i, :k + 1]
        backward = initial_rank[forward, :k + 1]
        return forward[np.where(backward == i)[0]]

    for i in range(n_all):
        k_rec = reciprocal(i, k1)
        expansion = k_rec
        for candidate in k_rec:
            cand_rec = reciprocal(candidate, int(np.around(k1 / 2.0)))
            if len(np.intersect1d(cand_rec, k_rec)) > 2.0 / 3 * len(cand_rec):
                expansion = np.append(expansion, cand_rec)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(n_all):
            V_qe[i] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    jaccard = np.zeros((n_query, n_all), dtype=np.float32)
    for i in range(n_query):
        for j in range(n_all):
            jaccard[i, j] = 1 - np.minimum(V[i], V[j]).sum() / np.maximum(V[i], V[j]).sum()
    final = jaccard * (1 - lambda_value) + original[:n_query] * lambda_value
    return final[:, n_query:]


def clustered(n, d, n_clusters, rng, spread=0.5):
    centres = rng.normal(size=(n_clusters, d))
    labels = rng.integers(0, n_clusters, n)
    x = centres[labels] + spread * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (6, 3, 0.5), (5, 1, 0.0)])
def test_dense_and_memory_aware_match_reference(k1, k2, lam):
    rng = np.random.default_rng(k1 + k2)
    x, _ = clustered(140, 16, 7, rng)
    q, g = x[:20], x[20:]
    q_g, q_q, g_g = euclidean_distances(q, g), euclidean_distances(q, q), euclidean_distances(g, g)
    expected = reference_re_ranking(q_g, q_q, g_g, k1, k2, lam)
    dense = k_reciprocal_rerank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(dense, expected, atol=1e-5, rtol=0)
    chunked = k_reciprocal_rerank_features(q, g, k1=k1, k2=k2, lambda_value=lam, chunk=17)
    np.testing.assert_allclose(chunked, expected, atol=1e-5, rtol=0)


def test_memory_aware_never_builds_the_full_matrix(monkeypatch):
    """The features path only ever asks for blocks of at most ``chunk`` rows."""
    import cbir_kit.rerank.kreciprocal as kr

    rng = np.random.default_rng(1)
    x, _ = clustered(90, 8, 5, rng)
    seen = []
    original = kr.euclidean_rows

    def spy(features):
        block = original(features)

        def rows(s, e):
            seen.append(e - s)
            return block(s, e)
        return rows

    monkeypatch.setattr(kr, "euclidean_rows", spy)
    kr.k_reciprocal_rerank_features(x[:10], x[10:], k1=6, k2=3, chunk=16)
    assert max(seen) <= 16


def test_bad_parameters_raise():
    rng = np.random.default_rng(0)
    x, _ = clustered(30, 4, 3, rng)
    with pytest.raises(CbirError, match="lambda"):
        k_reciprocal_rerank_features(x[:5], x[5:], lambda_value=2)
    with pytest.raises(CbirError, match="k1"):
        k_reciprocal_rerank_features(x[:5], x[5:], k1=40)
    with pytest.raises(CbirError, match="q_g"):
        k_reciprocal_rerank(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2)))


def test_query_expansion_formulas():
    rng = np.random.default_rng(3)
    g, _ = clustered(50, 8, 4, rng)
    q, _ = clustered(4, 8, 4, rng)
    sims = q @ g.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :3]
    for alpha in (0.0, 3.0):
        expected = []
        for i in range(len(q)):
            v = q[i].astype(np.float64).copy()
            for j in top[i]:
                v += max(sims[i, j], 0.0) ** alpha * g[j]
            expected.append(v / np.linalg.norm(v))
        np.testing.assert_allclose(query_expansion(q, g, n=3, alpha=alpha), expected, atol=1e-5)
    # DBA: each gallery vector plus its 2 nearest *other* gallery vectors, averaged
    sims_gg = g @ g.T
    np.fill_diagonal(sims_gg, -np.inf)
    nn = np.argsort(-sims_gg, axis=1, kind="stable")[:, :2]
    expected = g + g[nn].sum(axis=1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(database_augmentation(g, n=2), expected, atol=1e-5)


def test_qe_specs_parse_to_n_and_alpha():
    assert parse_method("qe", "aqe:5") == QESpec(5, 0.0)
    assert parse_method("qe", "alpha:3:10") == QESpec(10, 3.0)
    for bad in ("aqe", "alpha:3", "qe:5", "aqe:x", "aqe:0", "alpha:-1:5", "", None):
        with pytest.raises(CbirError, match=r"qe=.* must be aqe:N \(average of the top N\) or alpha:A:N"):
            parse_method("qe", bad)


def _map(q, g, ds, dist=None):
    scores = -dist if dist is not None else q @ g.T
    ranked = np.argsort(-scores, axis=1, kind="stable")
    rel = M.relevance_matrix(ranked, ds.query_labels, ds.gallery_labels)
    return M.mean_average_precision(rel, ds.n_relevant())


def test_reranking_and_qe_raise_map_on_corel(corel_features):
    q, g, ds = corel_features
    base = _map(q, g, ds)
    assert _map(query_expansion(q, g, n=5), g, ds) > base
    assert _map(query_expansion(q, g, n=10, alpha=3.0), g, ds) > base
    dba = database_augmentation(g, n=3)
    assert _map(query_expansion(q, dba, n=5, alpha=0.0), dba, ds) > base
    reranked = k_reciprocal_rerank_features(q, g)
    assert _map(q, g, ds, dist=reranked) > base
