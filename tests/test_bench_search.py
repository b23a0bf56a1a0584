"""`cbir bench search` in a reduced form (tiny galleries, few queries): structure, not timings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cbir_kit.bench.search import (Method, MixtureSynth, bench_search, feature_statistics, format_result,
                                   make_corpus, n_lists, parse_methods, tune)
from cbir_kit.cli import main
from cbir_kit.errors import CbirError
from cbir_kit.index.ann import recall_vs_exact


@pytest.fixture(scope="module")
def real():
    """A small clustered 'real' set: 400 vectors, 96-d, 8 clusters."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 96))
    x = centres[rng.integers(0, 8, 400)] + 0.6 * rng.standard_normal((400, 96))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_synth_samples_are_unit_vectors_in_the_pca_space(real):
    synth = MixtureSynth(dim=32, n_clusters=8).fit(real)
    y = synth.sample(3000, np.random.default_rng(1))
    assert y.shape == (3000, 32) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    # the PCA directions are orthonormal and transform() is normalise((x - mean) P)
    np.testing.assert_allclose(synth.components_.T @ synth.components_, np.eye(32), atol=1e-8)
    t = synth.transform(real[:5])
    ref = (real[:5] - real.mean(0)) @ synth.components_
    np.testing.assert_allclose(t, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


def test_synth_mixture_moments_match_the_formula(real):
    """Per component: mean m_c, covariance (1 - f) S_c + f tr(S_c) / dim I; weights n_c / N."""
    synth = MixtureSynth(dim=16, n_clusters=4, isotropic=0.3).fit(real)
    assert sum(len(m) for m in synth.members_) == len(real)
    np.testing.assert_allclose(synth.weights_, [len(m) / len(real) for m in synth.members_])
    draws = synth.draw(120_000, np.random.default_rng(2))
    # assign each draw to its component by the nearest centre (the clusters are well apart here)
    centres = np.array(synth.centers_)
    which = ((draws[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_allclose(np.bincount(which, minlength=4) / len(draws), synth.weights_, atol=0.01)
    for c, members in enumerate(synth.members_):
        s_c = members.T @ members / (len(members) - 1)
        expected = 0.7 * s_c + 0.3 * np.trace(s_c) / 16 * np.eye(16)
        mine = draws[which == c]
        np.testing.assert_allclose(mine.mean(0), centres[c], atol=0.05 * np.sqrt(np.trace(s_c)))
        np.testing.assert_allclose(np.cov(mine.T), expected, atol=0.05 * np.abs(expected).max())
    y = synth.sample(1000, np.random.default_rng(5))
    d = synth.draw(1000, np.random.default_rng(5))
    np.testing.assert_allclose(y, d / np.linalg.norm(d, axis=1, keepdims=True), atol=1e-6)


def test_synth_matches_corel_neighbour_statistics(corel_features):
    q, g, _ = corel_features
    real = np.concatenate([q, g])
    synth = MixtureSynth(dim=256).fit(real)
    stats_real = feature_statistics(synth.transform(real))
    stats_synth = feature_statistics(synth.sample(1000, np.random.default_rng(0)))
    assert abs(stats_real["nn10_cos"] - stats_synth["nn10_cos"]) < 0.05
    assert abs(stats_real["nn1_cos"] - stats_synth["nn1_cos"]) < 0.06
    ratio = np.array(stats_synth["eig_top"]) / np.array(stats_real["eig_top"])
    assert np.all((ratio > 0.7) & (ratio < 1.4))


def test_corpus_uses_real_vectors_when_there_are_enough(real):
    synth = MixtureSynth(dim=32).fit(real)
    c = make_corpus(real, synth, 300, 20, seed=0)
    assert c.source == "real" and c.gallery.shape == (300, 32) and len(c.tune) == len(c.queries) == 20
    # all 340 rows are distinct real vectors, mapped into the benchmark space
    mapped = synth.transform(real)
    rows = np.concatenate([c.gallery, c.tune, c.queries])
    nearest = (rows @ mapped.T).argmax(1)
    assert len(set(nearest.tolist())) == 340
    assert make_corpus(real, synth, 390, 20, seed=0).source == "synthetic"


def test_tune_picks_the_smallest_value_reaching_the_target():
    exact = np.arange(10)[None].repeat(3, 0)

    class Fake:  # returns the exact top-10 with (10 - value) ids replaced by -1
        value = 0

        def search(self, q, k):
            ids = exact.copy()
            ids[:, :max(0, 10 - self.value)] = -1
            return None, ids

    def setter(index, v):
        index.value = v

    method = Method("fake", Fake, "knob", [2, 5, 9, 10], setter)
    value, curve = tune(method, Fake(), np.zeros((3, 4)), exact, 10, target=0.85)
    assert value == 9 and [c["recall@10"] for c in curve] == [0.2, 0.5, 0.9]
    # unreachable target: the smallest value within 0.005 of the best
    value, curve = tune(Method("fake", Fake, "knob", [2, 5, 9, 9], setter), Fake(), np.zeros((3, 4)), exact, 10, 0.95)
    assert value == 9 and len(curve) == 4


def test_reduced_benchmark_structure(real):
    result = bench_search(real, "toy", sizes=[600, 1500], dim=32, n_queries=8, k=10,
                          methods="ivf,hnsw,ivfpq,itq16,itq32", target_recall=0.9, repeats=1, n_single=4,
                          algo2_size=500, algo2_dim=24, algo2_k=(50, 10), progress=False)
    rows = result["results"]
    assert [(r["size"], r["method"]) for r in rows] == [
        (s, m) for s, nl in ((600, n_lists(600)), (1500, n_lists(1500)))
        for m in ("Flat", f"IVF{nl},Flat", "HNSW32", f"IVF{nl},PQ4", "ITQ16+rerank", "ITQ32+rerank")]
    assert result["features"]["source"] == "synthetic"
    for r in rows:
        assert 0.0 <= r["recall@10"] <= 1.0
        assert r["build_s"] >= 0 and r["batched_ms"] > 0 and r["single_ms"] > 0 and r["bytes_per_vector"] > 0
    for r in rows:
        if r["method"] == "Flat":
            assert r["recall@10"] == 1.0 and r["speedup_batched"] == 1.0 and r["value"] is None
            assert 4 * 32 <= r["bytes_per_vector"] < 4 * 32 + 1  # the vectors plus a header
        elif r["method"].startswith("ITQ"):
            bits = int(r["method"][3:5])
            assert r["bytes_per_vector"] == bits // 8 + 4 * 32 and r["knob"] == "shortlist"
            assert r["value"] >= 10 and r["tuning"]
        elif "PQ4" in r["method"]:
            assert r["bytes_per_vector"] < 4 * 32  # compressed codes (+ ids, centroids)
    assert [(a["n"], a["dim"], a["k"]) for a in result["algo2"]] == [(500, 24, 50), (500, 24, 10)]
    for a in result["algo2"]:
        assert a["top_k_overlap"] > 0.99 and a["ratio"] > 0  # both are exact: the same top-k
    text = format_result(result)
    assert "ITQ32+rerank" in text and "Algo 2" in text and "synthetic" in text
    json.dumps(result)  # serialisable as it is


def test_recall_is_measured_against_exact(real):
    """An ANN row's recall equals recall_vs_exact recomputed independently (hand-made ids)."""
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    ann = np.array([[0, 1, 9, 8], [7, 6, 5, -1]])
    assert recall_vs_exact(ann, exact, 4) == pytest.approx((2 / 4 + 3 / 4) / 2)


def test_bad_arguments_are_clear_errors(real):
    with pytest.raises(CbirError, match="dim=30 must be a positive multiple of 8"):
        bench_search(real, "toy", sizes=[500], dim=30, progress=False)
    with pytest.raises(CbirError, match="unknown method"):
        parse_methods("flat,annoy", 64)
    with pytest.raises(CbirError, match="itq128"):
        parse_methods("itq128", 64)
    assert parse_methods("ivf", 64) == ["flat", "ivf"]
    with pytest.raises(CbirError, match="dim=512 is larger"):
        MixtureSynth(dim=512).fit(real)


def test_cli_writes_json_and_report(real, tmp_path, capsys):
    path = tmp_path / "real.npy"
    np.save(path, real)
    out = tmp_path / "bench.json"
    rc = main(["bench", "search", "--features", str(path), "--sizes", "300,700", "--dim", "32", "--queries", "5",
               "--methods", "ivf,itq32", "--algo2-size", "300", "--repeats", "1", "--no-progress",
               "--json", str(out), "--report", str(tmp_path / "rep")])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["features"]["source"] == "real/synthetic"  # 300 + 10 fit in 400 real vectors, 700 do not
    assert [r["method"] for r in result["results"]] == ["Flat", f"IVF{n_lists(300)},Flat", "ITQ32+rerank",
                                                         "Flat", f"IVF{n_lists(700)},Flat", "ITQ32+rerank"]
    assert (tmp_path / "rep" / "search_scaling.png").stat().st_size > 1000
    assert "| 300 | real |" in (tmp_path / "rep" / "search_bench.md").read_text()
    assert "search_scaling.png" in (tmp_path / "rep" / "search_bench.md").read_text()
    capsys.readouterr()
    rc = main(["bench", "search", "--features", str(path), "--sizes", "300", "--dim", "20"])
    assert rc == 2 and "--dim" in capsys.readouterr().err
