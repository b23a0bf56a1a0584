"""The retrieval challenge: scoring formula, metrics, leaderboard, and adversarial submissions in the sandbox."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir_kit.errors import CbirError
from cbir_kit.grade import challenge, scoring
from cbir_kit.grade.sandbox import Limits, bwrap_status

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

# The same method with a static threshold on the cosine similarity (thresholded retrieval, notebook 05).
THRESHOLDED = HONEST.replace('return np.argsort(-s, axis=1, kind="stable")[:, :k].tolist()',
                             'order = np.argsort(-s, axis=1, kind="stable")[:, :k]\n'
                             '    return [row[s[q, row] >= 0.4].tolist() for q, row in enumerate(order)]')

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


def test_noise_band_counts_a_speedup_near_one_as_exactly_one():
    assert scoring.counted_speedup(1.05, 0.10) == 1.0
    assert scoring.counted_speedup(0.95, 0.10) == 1.0
    assert scoring.counted_speedup(1.2, 0.10) == 1.2
    assert scoring.counted_speedup(0.8, 0.10) == 0.8
    assert scoring.counted_speedup(1.1, 0.10) == 1.0 and scoring.counted_speedup(1 / 1.1, 0.10) == 1.0  # edges
    assert scoring.counted_speedup(1.05, 0.0) == 1.05                                                    # no band
    cfg = scoring.load_config(overrides={"score": {"speed_cap": 2.0}})
    assert cfg["score"]["noise_band"] == 0.10                                                            # the default
    metrics = {"f1": 0.5, "mAP": 0.5}
    slower = scoring.score(metrics, {"build_s": 1.0, "retrieve_s": 1.0}, {"build_s": 0.9, "retrieve_s": 1.0}, cfg)
    assert slower["measured_speedup"] == pytest.approx(0.95)
    assert slower["speedup"] == 1.0 and slower["speed"] == 0.5
    faster = scoring.score(metrics, {"build_s": 0.5, "retrieve_s": 0.5}, {"build_s": 0.6, "retrieve_s": 0.6}, cfg)
    assert faster["speedup"] == pytest.approx(1.2) and faster["speed"] == pytest.approx(0.6)


def test_timed_runs_continue_until_their_spread_is_small():
    timing = {"repeats": 2, "max_repeats": 4, "max_spread": 0.10}
    assert scoring.needs_another_run([], timing)
    assert scoring.needs_another_run([1.0], timing)                       # fewer than repeats
    assert not scoring.needs_another_run([1.0, 1.05], timing)             # spread 0.05 / 1.025
    assert scoring.needs_another_run([1.0, 1.5], timing)                  # spread 0.5 / 1.25 = 0.4
    assert scoring.needs_another_run([1.0, 1.5, 1.2], timing)             # spread 0.5 / 1.2
    assert not scoring.needs_another_run([1.0, 1.5, 1.2, 1.4], timing)    # max_repeats reached
    assert scoring.spread([2.0, 1.0, 3.0]) == pytest.approx(1.0)         # (3 - 1) / 2
    assert scoring.spread([4.0]) == 0.0 and not scoring.needs_another_run([4.0], {**timing, "repeats": 1})
    for bad, message in (({"max_repeats": 1}, r"timing.max_repeats must be an integer >= timing.repeats \(3\)"),
                         ({"max_spread": -0.1}, "timing.max_spread must be a number >= 0"),
                         ({"repeats": 0}, "timing.repeats must be an integer >= 1"),
                         ({"warmup": 1.5}, "timing.warmup must be an integer >= 0")):
        with pytest.raises(CbirError, match=message):
            scoring.load_config(overrides={"timing": bad})
    with pytest.raises(CbirError, match="score.noise_band must be a number >= 0"):
        scoring.load_config(overrides={"score": {"noise_band": "10%"}})


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
    ([[0], [-1]], "outside"),
    ([[1, 1], [0]], "twice"),
    ([[0], [2 ** 40]], "not lists of gallery indices"),
    ([[0], ["a"]], "not lists of gallery indices"),
    ("ab", "one list per query"),
])
def test_malformed_answers_are_rejected(answer, message):
    with pytest.raises(challenge._Failure, match=message):
        challenge._check_answer(answer, 2, 5, 2)


def test_k0_means_no_cap_and_accepts_any_length_up_to_the_gallery():
    cfg = scoring.load_config()
    assert cfg["k"] == 0 and challenge.answer_cap(cfg, 7) == 7
    assert challenge.answer_cap(scoring.load_config(overrides={"k": 3}), 7) == 3
    assert challenge.answer_cap(scoring.load_config(overrides={"k": 30}), 7) == 7
    with pytest.raises(CbirError, match="k must be an integer >= 0"):
        scoring.load_config(overrides={"k": -1})
    k = challenge.answer_cap(cfg, 7)
    answer = [[], [3], list(range(7))[::-1], [6, 0, 2]]
    ids = challenge._check_answer(answer, 4, 7, k)
    assert ids.shape == (4, 7)
    for q, row in enumerate(answer):
        assert ids[q, :len(row)].tolist() == row and (ids[q, len(row):] == -1).all()
    # a 2-D array and a list of 1-D arrays are the same answer as lists
    full = np.argsort(np.random.default_rng(0).random((4, 7)), axis=1)
    assert (challenge._check_answer(full, 4, 7, k) == full).all()
    assert (challenge._check_answer([r.astype(np.uint16) for r in full], 4, 7, k) == full).all()
    for bad, message in (([list(range(7)) + [0], [], [], []], "at most k=7"),
                         ([[0, 7], [], [], []], "outside"),
                         ([[], [], [], [5, 1, 5]], "twice for query 3"),
                         ([[]] * 3, "one list per query")):
        with pytest.raises(challenge._Failure, match=message):
            challenge._check_answer(bad, 4, 7, k)


def test_packed_answers_are_validated_before_use():
    from cbir_kit.grade.runner import pack_answer
    rows, n, payload = pack_answer([[2, 0], [1]])
    assert (rows, n, len(payload)) == (2, 3, 4 * 5)
    assert challenge.check_packed(rows, n, payload, 2, 3, 3).tolist() == [[2, 0], [1, -1]]
    regrouped = np.array([1, 2, 2, 0, 1], np.int32).tobytes()     # the same ids, lists of length 1 and 2
    negative = np.array([4, -1, 2, 0, 1], np.int32).tobytes()      # lengths 4 and -1 also sum to 3
    for args, message in (((rows, n + 1, payload), "sizes do not match"),
                          ((rows, n, payload[:-1]), "sizes do not match"),
                          ((rows, n, negative), "list lengths"),
                          ((rows, "3", payload), "malformed answer"),
                          ((rows, n, None), "malformed answer")):
        with pytest.raises(challenge._Failure, match=message):
            challenge.check_packed(*args, 2, 3, 3)
    assert challenge.check_packed(rows, n, regrouped, 2, 3, 3).tolist() == [[2, -1], [0, 1]]


def test_a_full_size_answer_round_trips():
    """1,000 queries x 10,000 gallery ids (the Animals-10 split, no cap) through the packing and the check."""
    rng = np.random.default_rng(0)
    full = np.argsort(rng.random((1000, 10_000), np.float32), axis=1)
    rows, n, payload = challenge.pack_answer(full)
    assert (rows, n, len(payload)) == (1000, 10_000_000, 4 * 10_001_000)   # 40 MB, below MAX_REPLY_BYTES
    assert len(payload) < challenge.MAX_REPLY_BYTES
    assert (challenge.check_packed(rows, n, payload, 1000, 10_000, 10_000) == full).all()


def test_variable_length_metrics_equal_sklearn_per_query():
    from sklearn.metrics import precision_recall_fscore_support

    g_labels = np.array([0, 1, 0, 2, 0, 1, 2, 2, 0, 1])
    q_labels = np.array([0, 1, 2, 0, 2])
    n_rel = np.array([(g_labels == lab).sum() for lab in q_labels])
    staged = challenge.Staged(Path("."), [], [], g_labels, q_labels, n_rel)
    answer = [[0, 2, 5, 4], list(np.argsort(g_labels != 1, kind="stable")), [], [8], [9, 3, 0, 6, 7, 1]]
    got = challenge.evaluate_answer(challenge._check_answer([[int(i) for i in r] for r in answer], 5, 10, 10), staged)
    p, r, f = [], [], []
    for q, row in enumerate(answer):
        y_true = g_labels == q_labels[q]
        y_pred = np.isin(np.arange(10), row)
        pq, rq, fq, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
        p.append(pq)
        r.append(rq)
        f.append(fq)
    assert got["precision"] == pytest.approx(np.mean(p))
    assert got["recall"] == pytest.approx(np.mean(r))
    assert got["f1"] == pytest.approx(np.mean(f))
    # AP by hand, divided by all relevant: q0 (R=4) hits at ranks 1, 2, 4 -> (1 + 1 + 3/4) / 4;
    # q1 full ranking with the 3 relevant first -> 1; q2 empty -> 0; q3 (R=4) hit at rank 1 -> 1/4;
    # q4 (R=3) hits at ranks 2, 4, 5 -> (1/2 + 2/4 + 3/5) / 3
    assert got["mAP"] == pytest.approx(np.mean([2.75 / 4, 1.0, 0.0, 0.25, (0.5 + 0.5 + 0.6) / 3]))


def test_staging_hides_names_and_order(tmp_path, demo_dataset):
    staged = challenge.stage_dataset(demo_dataset, tmp_path / "data", seed=1)
    names = sorted(p.name for p in (tmp_path / "data" / "gallery").iterdir())
    assert names == [f"{i:05d}.png" for i in range(demo_dataset.n_gallery)]
    assert not any("__" in Path(p).name for p in staged.query + staged.gallery)
    # the labels follow the images: staged gallery file i shows the original image with label gallery_labels[i]
    originals = [(np.asarray(Image.open(p).convert("RGB"), dtype=np.int16), lab)
                 for p, lab in zip(demo_dataset.gallery, demo_dataset.gallery_labels)]
    for i in (0, 7, 33):
        staged_px = np.asarray(Image.open(tmp_path / "data" / "gallery" / f"{i:05d}.png").convert("RGB"), dtype=np.int16)
        same = [lab for px, lab in originals if px.shape == staged_px.shape and np.abs(px - staged_px).max() <= 1]
        assert same and same[0] == staged.gallery_labels[i]
    assert not np.array_equal(staged.query_labels, demo_dataset.query_labels)  # shuffled


def test_staged_files_carry_nothing_but_pixels(tmp_path, demo_dataset):
    """No hard links, no byte-identical copies (hash look-ups), no label order in inodes, one time and mode."""
    import hashlib

    public = {hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in demo_dataset.gallery}
    modes_before = {str(p): os.stat(p).st_mode for p in demo_dataset.gallery}
    runs = []
    for seed in (challenge.staging_seed("secret"), challenge.staging_seed("secret")):
        folder = tmp_path / f"run{len(runs)}"
        staged = challenge.stage_dataset(demo_dataset, folder, seed)
        files = sorted((folder / "gallery").iterdir())
        stats = [os.stat(f) for f in files]
        assert all(st.st_nlink == 1 and st.st_mtime == challenge.STAMP and st.st_mode & 0o777 == 0o644
                   for st in stats)
        hashes = {hashlib.sha1(f.read_bytes()).hexdigest() for f in files}
        assert not hashes & public, "a staged file is byte-identical to a public one"
        assert not {st.st_ino for st in stats} & {os.stat(p).st_ino for p in demo_dataset.gallery}, "no shared inode"
        runs.append((hashes, staged.gallery_labels))
    assert not runs[0][0] & runs[1][0], "two runs share byte-identical files"
    assert {str(p): os.stat(p).st_mode for p in demo_dataset.gallery} == modes_before, "originals untouched"
    with pytest.raises(CbirError, match="seed must be"):
        scoring.load_config(overrides={"seed": "zero"})


# ---- adversarial batch --------------------------------------------------------------------

# Staging re-encodes every image after flipping the lowest bit of 16 pixels (a fresh secret per run):
# features move by about 1e-6, so a near-tie in a ranking may swap. Metrics of the staged run match the
# original split's within this tolerance, not bit for bit.
STAGED = 5e-3


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
    ref = _honest_reference(demo_dataset, demo_dataset.n_gallery)   # k = 0: the full ranking comes back
    assert ref["recall"] == pytest.approx(1.0)
    for student in ("honest", "honest_dir"):
        assert by[student]["status"] == "ok", by[student]["reason"]
        for m in ("precision", "recall", "mAP"):
            assert by[student]["metrics"][m] == pytest.approx(ref[m], abs=STAGED), (student, m)

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


# ---- attacks on the timing and the repeats, each graded beside an honest submission -----------

# Two runs per submission (one warm-up, one timed), each a fresh process; a fixed staging seed, so an
# honest submission gets exactly the same metrics in every batch.
ATTACK_CFG = {**FAST_CFG, "seed": 11, "timing": {**FAST_CFG["timing"], "warmup": 1, "repeats": 1}}


def _grade(tmp_path: Path, sources: dict[str, str], sandbox: str = "auto") -> dict:
    """Grade ``{student: source}`` under ATTACK_CFG with the honest method as baseline; results by student."""
    subs = tmp_path / "subs"
    subs.mkdir(parents=True)
    for student, source in sources.items():
        _write(subs, f"{student}.py", source)
    baseline = tmp_path / "cheap_baseline.py"
    baseline.write_text(HONEST)
    summary = challenge.run_challenge(subs, "demo", tmp_path / "out", progress=False,
                                      overrides={**ATTACK_CFG, "baseline": str(baseline), "sandbox": sandbox})
    return {r["student"]: r for r in summary["results"]}


@pytest.fixture(scope="module")
def honest_alone(tmp_path_factory) -> dict:
    """The honest submission graded on its own: what it must get in a batch with an attacker too."""
    alone = _grade(tmp_path_factory.mktemp("alone"), {"honest": HONEST})["honest"]
    assert alone["status"] == "ok" and alone["answers_identical"], alone["reason"]
    assert alone["metrics"]["mAP"] > 0.2
    return alone


def _graded_as_alone(by: dict, honest_alone: dict) -> None:
    assert by["honest"]["status"] == "ok", by["honest"]["reason"]
    assert by["honest"]["metrics"] == honest_alone["metrics"]
    assert by["honest"]["answers_identical"]


def _without_retrieve(source: str) -> str:
    """``source`` with its retrieve() renamed _honest_retrieve(), for a wrapper to call."""
    return "import json, os\n" + source.replace("def retrieve(", "def _honest_retrieve(")


# The honest method with its work moved to import time: the gallery (listed from the staged folder) is
# embedded at import, plus 1.5 s of "feature extraction"; build does nothing.
IMPORT_WORK = HONEST + '''
import os, time
_folder = "/sandbox/data/gallery"
_g = _emb([os.path.join(_folder, name) for name in sorted(os.listdir(_folder))])
time.sleep(1.5)
def build(gallery_paths):
    pass
'''


@needs_bwrap
def test_work_done_at_import_is_build_time(tmp_path, honest_alone):
    by = _grade(tmp_path, {"honest": HONEST, "import_work": IMPORT_WORK}, sandbox="bwrap")
    _graded_as_alone(by, honest_alone)
    cheat = by["import_work"]
    assert cheat["status"] == "ok", cheat["reason"]
    assert cheat["metrics"] == honest_alone["metrics"]            # the same answers ...
    assert cheat["timings"]["import_s"] >= 1.5                    # ... and the import is timed, as build time
    assert cheat["timings"]["build_s"] >= 1.5
    assert all(run["build_s"] >= run["import_s"] >= 1.5 for run in cheat["runs"])


def _counting(dirs: str, later: str = "[[] for _ in query_paths]") -> str:
    """Correct answers on the first retrieve() ever, ``later`` (empty lists) after: a call counter in memory
    and in files in ``dirs``."""
    return _without_retrieve(HONEST) + f'''
_calls = 0
def retrieve(query_paths, k):
    global _calls
    _calls += 1
    marks = [os.path.join(d, ".retrieve_calls") for d in {dirs}]
    seen = [m for m in marks if os.path.exists(m)]
    for m in marks:
        try:
            with open(m, "a") as fh:
                fh.write("x")
        except OSError:
            pass
    if _calls > 1 or seen:
        print("COUNTER FOUND", seen)
        return {later}
    return _honest_retrieve(query_paths, k)
'''


WORK_DIRS = '[os.getcwd(), os.environ["HOME"], os.environ["TMPDIR"]]'
SANDBOX_DIRS = '[os.getcwd(), os.environ["HOME"], os.environ["TMPDIR"], "/tmp"]'


@needs_bwrap
def test_answers_that_change_between_runs_are_scored_by_the_worst(tmp_path, honest_alone):
    """A counter kept where a run can write never reaches the next run; one that does (a host folder, in
    rlimits mode) gets the submission the metrics of its empty answer, or fails it for a malformed one."""
    by = _grade(tmp_path / "bwrap", {"honest": HONEST, "counter": _counting(SANDBOX_DIRS)}, sandbox="bwrap")
    _graded_as_alone(by, honest_alone)
    counter = by["counter"]
    assert counter["status"] == "ok" and len(counter["runs"]) == 2, counter["reason"]
    assert "COUNTER FOUND" not in counter["output"]                # every run was its first
    assert counter["metrics"] == honest_alone["metrics"] and counter["answers_identical"]

    outside = tmp_path / "outside"   # reduced isolation: the submission can write outside its work dir
    (outside / "a").mkdir(parents=True)
    (outside / "b").mkdir()
    sources = {"honest": HONEST, "counter": _counting(f"{WORK_DIRS} + [{str(outside / 'a')!r}]"),
               "malformed_later": _counting(f"[{str(outside / 'b')!r}]", "[[0, 0] for _ in query_paths]")}
    by = _grade(tmp_path / "rlimits", sources, sandbox="rlimits")
    _graded_as_alone(by, honest_alone)
    assert by["malformed_later"]["status"] == "failed"
    assert by["malformed_later"]["reason"].startswith("run 2 (timed): retrieve() returned the same gallery index twice")
    counter = by["counter"]
    assert counter["status"] == "ok", counter["reason"]
    assert [run["quality"] > 0 for run in counter["runs"]] == [True, False]
    assert counter["output"].count("COUNTER FOUND") == 1 and not counter["answers_identical"]
    assert all(value == 0.0 for value in counter["metrics"].values())   # the empty answer's metrics
    assert counter["scores"]["quality"] == 0.0


def _caching(dirs: str) -> str:
    """The honest answers, cached on disk in ``dirs`` and returned from there when an earlier run left them."""
    return _without_retrieve(HONEST) + f'''
def retrieve(query_paths, k):
    for d in {dirs}:
        path = os.path.join(d, "answers.json")
        if os.path.exists(path):
            print("CACHE HIT", path)
            with open(path) as fh:
                return json.load(fh)
    answer = _honest_retrieve(query_paths, k)
    for d in {dirs}:
        with open(os.path.join(d, "answers.json"), "w") as fh:
            json.dump(answer, fh)
    return answer
'''


@needs_bwrap
def test_no_run_finds_what_an_earlier_run_wrote(tmp_path, honest_alone):
    """Answers cached in $HOME, $TMPDIR, /tmp and the working directory are gone in the next run
    (in rlimits mode too, for the private working directory, $HOME and $TMPDIR)."""
    for mode, dirs in (("bwrap", SANDBOX_DIRS), ("rlimits", WORK_DIRS)):
        by = _grade(tmp_path / mode, {"honest": HONEST, "cache": _caching(dirs)}, sandbox=mode)
        _graded_as_alone(by, honest_alone)
        cache = by["cache"]
        assert cache["status"] == "ok" and len(cache["runs"]) == 2, (mode, cache["reason"])
        assert "CACHE HIT" not in cache["output"], mode
        assert cache["metrics"] == honest_alone["metrics"]


# Tries to list, open and unlock the query folder at import and in build; reports in retrieve.
PEEK = "import os\n" + HONEST + '''
QUERIES = "/sandbox/data/query"
def _probe(when):
    lines = []
    for what, attempt in (("list", lambda: os.listdir(QUERIES)),
                          ("open", lambda: open(os.path.join(QUERIES, "00000.png"), "rb").close()),
                          ("chmod", lambda: os.chmod(QUERIES, 0o755))):
        try:
            attempt()
            lines.append(f"{when} {what} ok")
        except OSError as err:
            lines.append(f"{when} {what} {type(err).__name__}")
    return lines
SEEN = _probe("import")
_honest_build, _honest_retrieve = build, retrieve
def build(gallery_paths):
    SEEN.extend(_probe("build"))
    _honest_build(gallery_paths)
def retrieve(query_paths, k):
    print(*SEEN, *_probe("retrieve")[:2], f"retrieve sees {len(os.listdir(QUERIES))} queries", sep="\\n")
    return _honest_retrieve(query_paths, k)
'''


@needs_bwrap
def test_queries_are_unreadable_until_retrieve(tmp_path, honest_alone, demo_dataset):
    by = _grade(tmp_path, {"honest": HONEST, "peek": PEEK}, sandbox="bwrap")
    _graded_as_alone(by, honest_alone)
    peek = by["peek"]
    assert peek["status"] == "ok", peek["reason"]
    assert peek["metrics"] == honest_alone["metrics"]                       # retrieve still works
    out = peek["output"]
    for when in ("import", "build"):                                        # in both runs: locked again after each
        for what in ("list", "open"):
            assert out.count(f"{when} {what} PermissionError") == 2, (when, what, out)
        assert f"{when} chmod ok" not in out and out.count(f"{when} chmod ") == 2
    assert out.count("retrieve list ok") == out.count("retrieve open ok") == 2   # 00000.png exists
    assert out.count(f"retrieve sees {len(demo_dataset.query)} queries") == 2


PROBE_QUERIES = """
q=/sandbox/data/query
echo "uid $(id -u)"; stat -c "owner %u" $q
grep CapEff /proc/self/status
ls $q >/dev/null 2>&1 && echo "list ok" || echo "list denied"
cat $q/00000.png >/dev/null 2>&1 && echo "open ok" || echo "open denied"
chmod 755 $q 2>/dev/null && echo "chmod ok" || echo "chmod denied"
"""


@needs_bwrap
def test_queries_are_unreadable_under_bwrap_for_a_grader_that_is_not_root(monkeypatch):
    """A grader that is not root runs bwrap with --unshare-user: the submission runs as the grader's own uid,
    the owner of the query folder, so only mode 000, no capabilities and the read-only bind keep it out.
    Run here as such a grader (as root: as nobody, through setpriv) with the command the Sandbox builds."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from cbir_kit.grade import sandbox as sandbox_module

    run_as = []
    if os.getuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to act as an unprivileged grader")
        run_as = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        monkeypatch.setattr(os, "getuid", lambda: 65534)                   # the command a plain user gets
        monkeypatch.setattr(sandbox_module, "_python_roots", lambda: [])   # root's Python: out of nobody's reach
    data = Path(tempfile.mkdtemp(prefix="cbir-hidden-queries-"))
    try:
        (data / "query").mkdir()
        (data / "query" / "00000.png").write_bytes(b"pixels")
        for path in (data, data / "query", data / "query" / "00000.png"):
            path.chmod(0o755)
            if run_as:
                os.chown(path, 65534, 65534)                               # the grader owns its staged data
        spec = sandbox_module.SandboxSpec(ro={str(data): challenge.DATA_DIR})
        argv = ["/bin/sh", "-c", PROBE_QUERIES]
        full, _, _ = sandbox_module.Sandbox(mode="bwrap").command(argv, spec, data)
        assert "--unshare-user" in full and "--cap-add" not in full
        cmd = run_as + full[:full.index(sys.executable)] + argv   # without confine.py, which only sets limits
        seen = {}
        for visible in (False, True):
            challenge.show_queries(data, visible)
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stderr
            seen[visible] = run.stdout
    finally:
        challenge.show_queries(data, True)
        shutil.rmtree(data)
    hidden, shown = seen[False], seen[True]
    uid = hidden.split("uid ")[1].split()[0]
    assert uid != "0" and f"owner {uid}" in hidden                          # it owns the folder ...
    assert "CapEff:\t0000000000000000" in hidden                            # ... with no capability to override
    assert "list denied" in hidden and "open denied" in hidden and "chmod denied" in hidden
    assert "list ok" in shown and "open ok" in shown and "chmod denied" in shown


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
    ref = _honest_reference(demo_dataset, demo_dataset.n_gallery)
    for m in ("precision", "recall", "mAP"):
        assert mine.metrics[m] == pytest.approx(ref[m], abs=STAGED)
    cfg = scoring.load_config(overrides=fast)
    assert mine.scores == pytest.approx(scoring.score(mine.metrics, mine.timings, base.timings, cfg))
    assert mine.timings["runs"] == 1 and mine.answers_identical       # the grader's protocol: a fresh process
    assert mine.timings["build_s"] >= mine.timings["import_s"] > 0    # that imports, builds and retrieves
    _, top10 = score_locally(tmp_path / "honest.py", demo_dataset, overrides={**fast, "k": 10},
                             baseline=tmp_path / "honest.py")
    ref10 = _honest_reference(demo_dataset, 10)
    for m in ("precision", "recall", "mAP"):
        assert top10.metrics[m] == pytest.approx(ref10[m], abs=STAGED)
    for name, reason in (("too_many", f"at most k={demo_dataset.n_gallery}"), ("no_build", "no function build")):
        _, bad = score_locally(tmp_path / f"{name}.py", demo_dataset, overrides=fast, baseline=tmp_path / "honest.py")
        assert bad.status == "failed" and reason in bad.reason and bad.scores["score"] == 0.0
    with pytest.raises(CbirError, match="does not exist"):
        score_locally(tmp_path / "missing.py", demo_dataset)


def test_a_threshold_beats_the_full_ranking_on_f1_not_on_recall(tmp_path, demo_dataset):
    """Under k = 0 the full ranking has recall 1 but F1 ~ 2c/(1+c); a threshold trades recall for F1."""
    from cbir_kit.grade.local import score_locally

    _write(tmp_path, "full.py", HONEST)
    _write(tmp_path, "thresholded.py", THRESHOLDED)
    fast = {"timing": {"warmup": 0, "repeats": 1}}
    base, thresholded = score_locally(tmp_path / "thresholded.py", demo_dataset, overrides=fast,
                                      baseline=tmp_path / "full.py")
    assert thresholded.status == "ok", thresholded.reason
    assert base.metrics["recall"] == pytest.approx(1.0)
    share = 1 / len(np.unique(demo_dataset.gallery_labels))       # balanced classes: precision of everything
    assert base.metrics["f1"] == pytest.approx(2 * share / (1 + share))
    assert thresholded.metrics["f1"] > base.metrics["f1"] + 0.2
    assert thresholded.metrics["recall"] < base.metrics["recall"]
    assert thresholded.metrics["mAP"] <= base.metrics["mAP"] + 1e-12   # a cut ranking of the same order


def test_leaderboard_files_survive_hostile_names_and_huge_reasons(tmp_path):
    """A name matplotlib cannot parse as mathtext, spreadsheet formulas and a 20 MB reason: all files written, safe."""
    from cbir_kit.grade import scoring
    from cbir_kit.grade.challenge import BASELINE_NAME
    from cbir_kit.grade.leaderboard import write_leaderboard

    ok = {"status": "ok", "reason": "", "scores": {"score": 50.0, "quality": 0.5, "speedup": 1.0},
          "metrics": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "mAP": 0.5},
          "timings": {"build_s": 1.0, "retrieve_s": 1.0, "retrieve_ms_per_query": 1.0}}
    summary = {"dataset": "demo", "n_queries": 2, "n_gallery": 3, "k": 0, "sandbox_note": "test",
               "config": scoring.load_config(),
               "results": [{**ok, "student": BASELINE_NAME}, {**ok, "student": "=cmd|'/c calc'!A1 $\\frac{$"},
                           {**ok, "student": "@bob", "status": "failed", "reason": "=" + "x" * 20_000_000,
                            "scores": {}, "metrics": {}, "timings": {}}]}
    paths = write_leaderboard(summary, tmp_path)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert {r["student"] for r in rows} == {BASELINE_NAME, "'=cmd|'/c calc'!A1 $\\frac{$", "'@bob"}
    assert all(len(r["reason"]) <= 501 for r in rows) and paths["json"].stat().st_size < 100_000
    assert "<img" in paths["html"].read_text()


def test_replies_and_notebooks_that_would_crash_the_grader_are_that_students_failure(tmp_path):
    """200,000 nested "[" (RecursionError in json.loads) and a code cell whose source is a number: a reason, no crash."""
    import json as _json

    import nbformat as nbf

    from cbir_kit.errors import CbirError
    from cbir_kit.grade.challenge import _Failure, notebook_to_module, parse_reply

    for line in (b"[" * 200_000, b"[1, 2]", b"not json", b"\xff\xfe"):
        with pytest.raises(_Failure, match="malformed reply"):
            parse_reply(line)
    assert parse_reply(b'{"ok": true}') == {"ok": True}

    nb = nbf.v4.new_notebook(cells=[nbf.v4.new_code_cell("def build(paths):\n    pass")])
    raw = _json.loads(nbf.writes(nb))
    raw["cells"][0]["source"] = 42
    path = tmp_path / "odd.ipynb"
    path.write_text(_json.dumps(raw))
    with pytest.raises(CbirError, match="code cell 0 has no text source"):
        notebook_to_module(path, tmp_path / "submission.py")


def test_a_process_that_stops_reading_cannot_block_the_grader():
    # 500 KB of paths into a pipe that holds 64 KiB, sent to a process that never reads: the command is
    # written from a thread of its own, the reply's time limit ends the wait, closing the session ends it all
    from cbir_kit.grade.challenge import _Failure, _Session

    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                            start_new_session=True)
    os.close(write_fd)
    session = _Session(proc, read_fd, Limits(wall_s=60))
    t0 = time.monotonic()
    with pytest.raises(_Failure, match="build exceeded"):
        session.request({"op": "build", "paths": ["/sandbox/data/gallery/00001.jpg"] * 15_000}, 2.0, "the test's limit")
    session.close()
    assert time.monotonic() - t0 < 20 and proc.poll() is not None
