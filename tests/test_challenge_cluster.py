"""`run_challenge(..., cluster=)`: correctness checked in parallel on a Dask LocalCluster, timing serial, the serial results.

A small class built as tests/test_grading_challenge.py builds its submissions: an honest one (a single
file and a folder with a helper), one that raises in retrieve, one with a malformed answer, one that
times out in retrieve and a folder with no entry point; graded serially and on a cluster of two
workers, on the same staged split (a fixed seed).
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from test_grading_challenge import FAST_CFG, HONEST, _write  # noqa: E402

from cbir_kit.cluster import cluster_client, gather_checked  # noqa: E402
from cbir_kit.errors import CbirError  # noqa: E402
from cbir_kit.grade import challenge  # noqa: E402
from cbir_kit.grade.challenge import check_task  # noqa: E402

pytestmark = pytest.mark.slow

# one warm-up run and one timed run each; retrieve may take 5 s, the honest method takes well under one
CFG = {**FAST_CFG, "seed": 11,
       "timing": {**FAST_CFG["timing"], "warmup": 1, "repeats": 1, "retrieve_timeout_s": 5}}
FAILING = {"raises": "run 1 (warm-up): retrieve raised ValueError: boom",
           "malformed": "run 1 (warm-up): retrieve() returned the same gallery index twice for query 0",
           "slow": "run 1 (warm-up): retrieve exceeded timing.retrieve_timeout_s (5 s)",
           "no_entry": "could not prepare the submission: "}


@pytest.fixture(scope="module")
def client():
    with cluster_client("local:2") as c:
        yield c


def _class(tmp: Path) -> tuple[Path, Path]:
    subs = tmp / "subs"
    subs.mkdir(parents=True)
    _write(subs, "honest.py", HONEST)
    (subs / "honest_dir").mkdir()
    _write(subs / "honest_dir", "helpers.py", HONEST)
    _write(subs / "honest_dir", "submission.py", "from helpers import build, retrieve\n")
    _write(subs, "raises.py", "def build(g):\n    pass\ndef retrieve(q, k):\n    raise ValueError('boom')\n")
    _write(subs, "malformed.py", "def build(g):\n    pass\ndef retrieve(q, k):\n    return [[0, 0] for _ in q]\n")
    _write(subs, "slow.py", "import time\ndef build(g):\n    pass\ndef retrieve(q, k):\n    time.sleep(60)\n")
    (subs / "no_entry").mkdir()
    (subs / "no_entry" / "a.py").write_text("x = 1\n")
    (subs / "no_entry" / "b.py").write_text("x = 2\n")
    baseline = tmp / "cheap_baseline.py"
    baseline.write_text(HONEST)
    return subs, baseline


def _grade(monkeypatch, tmp: Path, subs: Path, baseline: Path, **kwargs) -> tuple[dict, list[str]]:
    """run_challenge's summary and the students :func:`challenge.run_one` graded in this process."""
    graded = []
    serial_run_one = challenge.run_one

    def recording(student, *args, **kw):
        graded.append(student)
        return serial_run_one(student, *args, **kw)

    monkeypatch.setattr(challenge, "run_one", recording)
    summary = challenge.run_challenge(subs, "demo", tmp / "out", overrides={**CFG, "baseline": str(baseline)},
                                      **kwargs)
    monkeypatch.setattr(challenge, "run_one", serial_run_one)
    return summary, graded


def _without_times(result: dict) -> dict:
    runs = [(r["run"], r["timed"], r["quality"]) for r in result["runs"]]
    scores = result["scores"] if result["status"] != "ok" else {"quality": result["scores"]["quality"]}
    return {**{k: v for k, v in result.items() if k not in ("timings", "runs", "scores")},
            "runs": runs, "scores": scores, "timed_runs": result["timings"].get("runs")}


def test_parallel_correctness_gives_the_serial_results(tmp_path, client, monkeypatch, capsys):
    subs, baseline = _class(tmp_path)
    serial, serial_graded = _grade(monkeypatch, tmp_path / "serial", subs, baseline, progress=False)
    parallel, parallel_graded = _grade(monkeypatch, tmp_path / "parallel", subs, baseline, progress=True,
                                       cluster=client)
    said = capsys.readouterr().out

    assert serial["staging_seed"] == parallel["staging_seed"] == 11
    assert {k: v for k, v in parallel.items() if k != "results"} == {k: v for k, v in serial.items() if k != "results"}
    one, two = serial["results"], parallel["results"]
    assert [r["student"] for r in two] == [r["student"] for r in one] == \
        [challenge.BASELINE_NAME, "honest", "honest_dir", "malformed", "no_entry", "raises", "slow"]
    assert [_without_times(r) for r in two] == [_without_times(r) for r in one]
    assert [set(r["timings"]) for r in two] == [set(r["timings"]) for r in one]
    by = {r["student"]: r for r in two}
    for student in ("honest", "honest_dir"):
        assert by[student]["status"] == "ok" and by[student]["metrics"]["mAP"] > 0.2, by[student]["reason"]
        assert len(by[student]["runs"]) == 2 and by[student]["answers_identical"]
    for student, reason in FAILING.items():
        assert by[student]["status"] == "failed" and by[student]["reason"].startswith(reason), by[student]["reason"]
        assert by[student]["scores"]["score"] == 0.0 and by[student]["runs"] == []

    # the serial grader ran everyone here; with the cluster only the baseline, those that passed the check
    # and the one a wall-clock limit stopped on the shared workers (decided here: the same reason)
    assert serial_graded == [r["student"] for r in one]
    assert parallel_graded == [challenge.BASELINE_NAME, "honest", "honest_dir", "slow"]
    checked, timed = said.split("timing the baseline and 3 submissions here, one at a time")
    for student in ("raises", "malformed", "no_entry"):
        assert f"  {student}: failed - {by[student]['reason']}" in checked and f"  {student}:" not in timed
    assert f"  slow: failed - {FAILING['slow']} (to be confirmed here)" in checked
    assert "  honest: passed" in checked and "  honest: ok" in timed

    # the same leaderboard, row for row, but for the times and the speed
    rows = [list(csv.DictReader(open(tmp_path / run / "out" / "leaderboard.csv"))) for run in ("serial", "parallel")]
    assert [list(r) for r in rows[1]] == [list(r) for r in rows[0]]
    assert {r["student"]: r["status"] for r in rows[1]} == {r["student"]: r["status"] for r in rows[0]}


def test_a_worker_that_cannot_see_the_data_stops_the_grading(tmp_path, client):
    """A storage problem of the cluster's (no shared staging folder) is an error, not a student's failure."""
    import numpy as np

    entry = tmp_path / "bob.py"
    entry.write_text(HONEST)
    nowhere = challenge.Staged(tmp_path / "not-shared", [], [], np.zeros(0), np.zeros(0), np.zeros(0))
    cfg = challenge.scoring.load_config(overrides=CFG)
    future = client.submit(check_task, "bob", entry, False, nowhere, cfg, "rlimits", tmp_path / "scratch", pure=False)
    with pytest.raises(CbirError, match=r"checking bob: the staged dataset .*not-shared/gallery is not visible"):
        list(gather_checked(client, [future], lambda i: "checking bob"))


def test_the_default_grades_without_dask_and_a_bad_spec_fails_before_staging(tmp_path):
    with pytest.raises(CbirError, match=r"cluster='local:0'"):
        challenge.run_challenge(tmp_path / "missing", "demo", tmp_path / "out", cluster="local:0")
    subs = tmp_path / "subs"
    subs.mkdir()
    _write(subs, "honest.py", HONEST)
    code = ("import sys; sys.modules['dask'] = sys.modules['distributed'] = None\n"
            "from cbir_kit.grade.challenge import run_challenge\n"
            f"s = run_challenge({str(subs)!r}, 'demo', {str(tmp_path / 'out')!r}, progress=False,\n"
            "                  overrides={'timing': {'warmup': 0, 'repeats': 1}, 'baseline': "
            f"{str(subs / 'honest.py')!r}}})\n"
            "assert [r['status'] for r in s['results']] == ['ok', 'ok'], s['results']\n"
            "assert not {'dask', 'distributed'} & "
            "{m for m, v in sys.modules.items() if v is not None}\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
