"""The paired bootstrap behind `cbir compare`'s "not distinguishable", against independent references."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cbir_kit.errors import CbirError
from cbir_kit.evaluation.bootstrap import paired_difference


def _numpy_percentile_bootstrap(d: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """An independent percentile bootstrap of the mean, written with plain numpy."""
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(resamples)])
    return tuple(np.percentile(means, [2.5, 97.5]))


def test_interval_matches_an_independent_bootstrap_and_the_normal_approximation():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.3, 0.9, 3000)
    b = np.clip(a + rng.normal(0.01, 0.1, 3000), 0, 1)
    out = paired_difference(a, b, seed=1)
    d = b - a
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))          # the normal approximation's half-width
    assert out["difference"] == pytest.approx(d.mean())
    assert out["low"] == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert out["high"] == pytest.approx(d.mean() + half, abs=0.1 * half)
    low, high = _numpy_percentile_bootstrap(d, 4000, seed=7)
    assert out["low"] == pytest.approx(low, abs=0.1 * half) and out["high"] == pytest.approx(high, abs=0.1 * half)
    assert out["distinguishable"] == (not out["low"] <= 0 <= out["high"])
    assert paired_difference(a, b, seed=1) == out               # seeded: reruns print the same


def test_identical_runs_are_not_distinguishable_and_counts_add_up():
    a = np.array([0.5, 0.25, np.nan, 1.0, 0.75])
    out = paired_difference(a, a.copy())
    assert (out["difference"], out["low"], out["high"]) == (0.0, 0.0, 0.0)
    assert out["n_queries"] == 4 and out["ties"] == 4 and not out["distinguishable"]
    b = np.array([0.6, 0.25, 0.1, 0.9, np.nan])                 # NaN in either run: that query is left out
    out = paired_difference(a, b)
    assert out["n_queries"] == 3 and (out["wins"], out["ties"], out["losses"]) == (1, 1, 1)
    with pytest.raises(CbirError, match="same queries"):
        paired_difference(a, b[:3])


def test_compare_on_corel_says_ivf64_is_not_distinguishable_from_exact(corel_csv, capsys, tmp_path):
    from cbir_kit.cli import main

    assert main(["compare", "--dataset", f"csv:{corel_csv}", "--configs", "exact", "index=IVF64,Flat,nprobe=8",
                 "--no-progress", "--device", "cpu", "--report", str(tmp_path / "rep"),
                 "--json", str(tmp_path / "runs.json")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## Differences from the first configuration" in report and "not distinguishable" in report
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert "vs_first" not in runs[0]["config"] and runs[1]["config"]["vs_first"]["mAP"]["distinguishable"] is False
    out = capsys.readouterr().out
    assert "mAP against the first configuration (exact), paired bootstrap over the queries:" in out
    row = next(line for line in out.splitlines() if line.startswith("index=IVF64,Flat,nprobe=8") and "[" in line)
    assert "not distinguishable" in row


def test_thresholded_configurations_are_also_compared_on_f1_over_the_same_evaluation_queries():
    from cbir_kit.pipeline.comparison import compare
    from cbir_kit.report.document import difference_lines

    results = compare(["threshold=static", "threshold=dynamic", "exact"], dataset="demo", progress=False)
    ev, f1 = results[1].per_query_f1
    assert np.array_equal(ev, results[0].per_query_f1[0]) and len(f1) == results[1].config["threshold"]["n_evaluation_queries"]
    assert set(results[1].config["vs_first"]) == {"mAP", "f1"}
    assert np.nanmean(f1) == pytest.approx(results[1].metrics["f1"])
    assert set(results[2].config["vs_first"]) == {"mAP"}        # not thresholded: no F1 to pair
    lines = difference_lines(results)
    assert any(line.startswith("f1 against the first configuration (threshold=static)") for line in lines)
