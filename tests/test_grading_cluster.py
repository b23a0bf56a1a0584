"""`cbir grade autograde --cluster`: one sandboxed task per student on a Dask LocalCluster, the same grades as serial.

The tiny two-notebook course of tests/test_grading_nbgrader.py, a class of five: right, partly right,
crashing, a refused submission (a symbolic link) and a missing notebook.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")
pytest.importorskip("distributed")

from test_grading_nbgrader import make_course, submit  # noqa: E402

from cbir_kit.grade import nbgrade  # noqa: E402
from cbir_kit.grade.sandbox import bwrap_status  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not bwrap_status()[0], reason=f"bubblewrap isolation unavailable: {bwrap_status()[1]}")]


def _class(course: Path, subs: Path) -> None:
    good_sq, good_cu = "def square(x):\n    return x * x", "def cube(x):\n    return x ** 3"
    submit(course, subs, "correct", {"squares": good_sq, "cubes": good_cu})
    submit(course, subs, "partly", {"squares": "def square(x):\n    return 9 if x == 3 else 0", "cubes": good_cu})
    submit(course, subs, "crashing", {"squares": good_sq, "cubes": "import os\ndef cube(x):\n    os._exit(3)"})
    submit(course, subs, "linked", {"squares": good_sq, "cubes": good_cu})
    (subs / "linked" / "ps1" / "cubes.ipynb").unlink()
    (subs / "linked" / "ps1" / "cubes.ipynb").symlink_to(subs / "correct" / "ps1" / "cubes.ipynb")
    submit(course, subs, "absent", {"squares": good_sq})                      # cubes.ipynb not handed in


def _without_times(rows: list[dict]) -> list[dict]:
    return [{**r, "seconds": None, "reason": r["reason"] if r["status"] != "graded" else None} for r in rows]


def test_parallel_autograde_gives_the_serial_grades_csv_feedback_and_gradebook(tmp_path):
    from nbgrader.api import Gradebook

    base = tmp_path / "base"
    make_course(base)
    nbgrade.release(base, progress=False)
    subs = tmp_path / "subs"
    _class(base, subs)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    shutil.copytree(base, serial, symlinks=True)
    shutil.copytree(base, parallel, symlinks=True)
    common = dict(cell_timeout=30, notebook_timeout=120, progress=False)
    one = nbgrade.autograde(subs, serial, tmp_path / "out1", **common)
    two = nbgrade.autograde(subs, parallel, tmp_path / "out2", cluster="local:2", **common)
    assert _without_times(two) == _without_times(one)
    points = {(r["student"], r["exercise"]): r["points"] for r in two}
    assert points["correct", "test_cube"] == 3 and points["partly", "test_square_hidden"] == 0
    assert points["crashing", "test_cube"] == 0 and points["linked", "test_cube"] == 0
    assert {r["status"] for r in two if r["student"] == "absent" and r["notebook"] == "cubes"} == {"missing"}
    with open(tmp_path / "out1" / "grades.csv") as a, open(tmp_path / "out2" / "grades.csv") as b:
        assert _without_times(list(csv.DictReader(a))) == _without_times(list(csv.DictReader(b)))
    pages = sorted(p.relative_to(tmp_path / "out1") for p in (tmp_path / "out1").rglob("*.html"))
    assert pages == sorted(p.relative_to(tmp_path / "out2") for p in (tmp_path / "out2").rglob("*.html"))
    for page in pages:
        assert (tmp_path / "out1" / page).read_text() == (tmp_path / "out2" / page).read_text(), page
    with Gradebook(f"sqlite:///{serial / 'gradebook.db'}") as g1, Gradebook(f"sqlite:///{parallel / 'gradebook.db'}") as g2:
        for student in ("correct", "partly", "crashing", "absent"):
            assert g2.find_submission("ps1", student).score == g1.find_submission("ps1", student).score
