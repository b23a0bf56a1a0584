"""The timing harness: counts, statistics and serialisation (no timing assertions)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cbir_kit.bench.harness import Bench, BenchResult, StageTiming, percentile_nearest_rank
from cbir_kit.errors import CbirError
from cbir_kit.index import ExactIndex


def test_percentile_nearest_rank_worked_example():
    values = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6]
    assert percentile_nearest_rank(values, 50) == 5   # ceil(0.5 * 10) = 5th smallest
    assert percentile_nearest_rank(values, 95) == 10  # ceil(0.95 * 10) = 10th smallest
    assert percentile_nearest_rank(values, 0) == 1
    assert np.isnan(percentile_nearest_rank([], 50))


def test_run_calls_warmup_plus_repeats_and_reports_median():
    calls = []
    bench = Bench(warmup=2, repeats=3)
    out = bench.run("index_build", lambda x: calls.append(x) or len(calls), 7, n_items=100)
    assert out == 5 and calls == [7] * 5
    stage = bench.result()["index_build"]
    assert len(stage.times_s) == 3 and stage.median_s == np.median(stage.times_s)
    assert stage.unit == "images" and stage.throughput == pytest.approx(100 / stage.median_s)


def test_per_item_latencies_and_stats():
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((200, 16)).astype(np.float32)
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    bench = Bench(warmup=1, repeats=2)
    index = bench.run("index_build", ExactIndex().fit, gallery, n_items=len(gallery))
    outs = bench.per_item("search", lambda q: index.search(q[None], 5)[1], queries)
    assert len(outs) == 30 and outs[0].shape == (1, 5)
    with bench.stage("threshold", n_items=30):
        _ = [o[0, 0] for o in outs]
    result = bench.result()
    search = result["search"]
    assert len(search.latencies_ms) == 30 and search.unit == "queries"
    assert search.p50_ms == percentile_nearest_rank(search.latencies_ms, 50)
    assert search.p50_ms <= search.p95_ms
    assert search.peak_traced_mb is not None and search.peak_traced_mb >= 0
    frame = result.to_frame()
    assert list(frame.index) == ["index_build", "search", "threshold"]
    assert {"median_s", "p50_ms", "p95_ms", "queries_per_s", "images_per_s"} <= set(frame.columns)
    assert result.env["cpu_count"] >= 1 and "faiss_threads" in result.env and result.env["device"] == "cpu"
    assert "<table" in result._repr_html_() and "search" in str(result)


def test_json_roundtrip(tmp_path):
    result = BenchResult([StageTiming("embed", [0.5, 0.3, 0.4], n_items=10, unit="images")], {"device": "cpu"})
    path = tmp_path / "bench.json"
    result.write_json(path)
    data = json.loads(path.read_text())
    assert data["stages"][0]["median_s"] == pytest.approx(0.4)
    assert data["stages"][0]["throughput"] == pytest.approx(25.0)
    assert data["env"] == {"device": "cpu"}
    assert list(tmp_path.iterdir()) == [path]


def test_bad_arguments():
    with pytest.raises(CbirError, match="repeats"):
        Bench(repeats=0)
    with pytest.raises(CbirError, match="no items"):
        Bench().per_item("search", lambda q: q, [])
    with pytest.raises(KeyError, match="no stage"):
        BenchResult([], {})["search"]
