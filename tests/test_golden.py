"""`cbir evaluate --json` on the offline demo set gives the numbers recorded before the package re-layout.

The values were written down from `cbir evaluate --json` on main before any module moved (2026-12-01);
a refactoring that changes them changed behaviour.  P@k, R@k and the set metrics are fractions of
54 queries and are compared exactly; mAP to 1e-6 (features differ in the last bits between CPUs).
"""
from __future__ import annotations

import json
import os
import stat

import pytest

from cbir_kit.cli import main

RECORDED = {"dataset": "demo", "model": "efficientnet_lite0", "n_queries": 54, "n_gallery": 72, "k": 10}
RECORDED_METRICS = {"mAP": 0.9990740740740741, "P@1": 1.0, "P@5": 0.8, "P@10": 0.4, "R@10": 1.0,
                    "hit_rate@10": 1.0, "precision": 0.4, "recall": 1.0, "f1": 0.5714285714285714,
                    # added after the re-layout (issue 20), recorded when they were added
                    "MAP@R": 0.9953703703703703, "R-precision": 0.9953703703703703, "MRR": 1.0,
                    "nDCG@10": 0.9996831867029017}


def test_demo_evaluation_matches_the_recorded_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("CBIR_CACHE", str(tmp_path / "cache"))
    old = os.umask(0o022)
    try:
        assert main(["evaluate", "--json", str(tmp_path / "out.json")]) == 0
    finally:
        os.umask(old)
    out = tmp_path / "out.json"
    result = json.loads(out.read_text())
    assert {k: result[k] for k in RECORDED} == RECORDED
    assert set(result["metrics"]) == set(RECORDED_METRICS)
    for name, value in RECORDED_METRICS.items():
        assert result["metrics"][name] == pytest.approx(value, abs=1e-6 if name in ("mAP", "MAP@R", "nDCG@10")
                                                         else 1e-12), name
    assert stat.S_IMODE(out.stat().st_mode) == 0o644   # what a plain write gives under umask 022
