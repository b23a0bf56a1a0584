"""The retrieval-method flags of `cbir evaluate` (cbir_kit.pipeline.stages), on the demo dataset."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cbir_kit.errors import CbirError
from cbir_kit.pipeline.job import evaluate
from cbir_kit.pipeline.stages import Methods


def _cbir(*args):
    return subprocess.run([sys.executable, "-m", "cbir_kit.cli", "evaluate", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))


def test_cli_runs_methods_and_records_them(demo_features, tmp_path):
    out = tmp_path / "hash.json"
    proc = _cbir("--hash", "itq:16", "--shortlist", "30", "--qe", "aqe:3", "--threshold", "dynamic",
                 "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "exact Flat on the same features" in proc.stdout
    r = json.loads(out.read_text())
    assert r["config"]["hash"]["shortlist"] == 30 and r["config"]["qe"] == {"n": 3, "alpha": 0.0, "kind": "average"}
    th = r["config"]["threshold"]
    assert th["method"] == "dynamic" and {"T", "w", "n", "mu"} <= set(th)
    assert th["n_calibration_queries"] + th["n_evaluation_queries"] == r["n_queries"]
    assert {"recall@10_vs_exact", "shortlist_recall@10", "mAP", "f1"} <= set(r["metrics"])
    assert {"qe_s", "hash_hamming_ms_per_query", "hash_rerank_ms_per_query", "threshold_calibrate_s"} <= set(r["timings"])
    assert r["config"]["exact_metrics"]["mAP"] > 0.9

    out = tmp_path / "ivf.json"
    proc = _cbir("--index", "IVF4,Flat", "--nprobe", "2", "--dba", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["config"]["index"] == "IVF4,Flat" and r["config"]["search_params"]["nprobe"] == 2
    assert 0 < r["metrics"]["recall@10_vs_exact"] <= 1 and "dba_s" in r["timings"]

    proc = _cbir("--hash", "itq:16", "--index", "HNSW32")
    assert proc.returncode == 2 and "--hash builds its own index (hash shortlist + float re-rank); leave --index at 'Flat'" in proc.stderr and "Traceback" not in proc.stderr


def test_no_methods_leave_the_exact_result_unchanged(demo_features):
    plain = evaluate("demo", progress=False)
    same = evaluate("demo", progress=False, methods=Methods())
    assert plain.metrics == same.metrics and "exact_metrics" not in same.config


def test_shortlist_of_whole_gallery_and_flat_reproduce_exact(demo_features):
    plain = evaluate("demo", progress=False)
    whole = evaluate("demo", progress=False, methods=Methods(hash="lsh:16", shortlist=72))
    assert whole.metrics["mAP"] == pytest.approx(plain.metrics["mAP"], abs=1e-6)
    assert whole.metrics["recall@10_vs_exact"] == 1.0 and whole.metrics["shortlist_recall@10"] == 1.0
    flat = evaluate("demo", progress=False, methods=Methods(rerank="kreciprocal"))
    assert flat.config["rerank"]["k1"] == 20 and flat.metrics["mAP"] > 0.5


def test_bad_combinations_fail_before_work():
    for m in (Methods(shortlist=10), Methods(rerank="kreciprocal", index="HNSW32"), Methods(qe="aqe"),
              Methods(tta_gallery=True), Methods(hash="itq:60")):
        with pytest.raises(CbirError):
            m.check()
