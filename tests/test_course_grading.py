"""The real course, graded end to end as the instructor grades it: `cbir grade release`, then `cbir grade autograde`.

A fresh course folder holds what a clone has (``grading/nbgrader_config.py``, ``grading/course.toml``
and ``notebooks/``); release builds ``source/`` itself.  Four students hand in, each notebook
made from the released student version:

* ``solved``   the instructor's answers: every point of the course, and no cell of any
               notebook raises (this is also the course's offline run, in the sandbox);
* ``unsolved`` the released notebooks as they are: every test fails, 0 points;
* ``wrong``    wrong-but-plausible answers (``course_answers.WRONG``): each loses its
               exercise's points, every other exercise keeps them, and the feedback names the
               mistake (the visible test's message, or the misconception catalogue's sentence);
* ``library``  one-line calls of the cbir_kit function the exercise asks for
               (``course_answers.LIBRARY``): the hidden tests catch them.
"""
from __future__ import annotations

import csv
import html
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbgrader")

from course_answers import LIBRARY, WRONG  # noqa: E402
from course_submissions import answers, instructor_answers  # noqa: E402

from cbir_kit.cli import main as cbir  # noqa: E402
from cbir_kit.grade.sandbox import bwrap_status  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
HIDDEN = "### BEGIN HIDDEN TESTS"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not bwrap_status()[0], reason=f"bubblewrap unavailable: {bwrap_status()[1]}")]


def fresh_clone(base: Path, data_root: Path | None) -> Path:
    """The files of a clone that grading needs, laid out as in the repository."""
    shutil.copytree(REPO / "notebooks", base / "notebooks")
    course = base / "grading"
    course.mkdir()
    shutil.copy(REPO / "grading" / "nbgrader_config.py", course)
    toml = (REPO / "grading" / "course.toml").read_text()
    if data_root is not None:
        toml = toml.replace('# data_root = "../datasets"', f'data_root = "{data_root}"')
    (course / "course.toml").write_text(toml)
    return course


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    from conftest import SHARED_DATA

    base = tmp_path_factory.mktemp("clone")
    course = fresh_clone(base, SHARED_DATA if SHARED_DATA.is_dir() else None)
    assert cbir(["grade", "release", "--course", str(course)]) == 0
    subs = base / "submissions"
    for nb in NOTEBOOKS:
        released = course / "release" / nb.stem / nb.name
        solved = instructor_answers(nb)
        answers(released, solved, subs / "solved" / nb.stem / nb.name)
        answers(released, {}, subs / "unsolved" / nb.stem / nb.name)
        for student, table in (("wrong", WRONG), ("library", LIBRARY)):
            if nb.stem in table:
                mistakes = {cell: code for cell, (code, _, _) in table[nb.stem].items()}
                answers(released, {**solved, **mistakes}, subs / student / nb.stem / nb.name)
    out = base / "grades"
    # generous limits: this checks what is graded, not how fast a loaded CI machine runs it
    assert cbir(["grade", "autograde", str(subs), "--course", str(course), "--out", str(out),
                 "--cell-timeout", "300", "--notebook-timeout", "1800"]) == 0
    with open(out / "grades.csv") as fh:
        rows = list(csv.DictReader(fh))
    return course, out, rows


def points(rows, student) -> dict[tuple[str, str], tuple[float, float]]:
    """Autograded points of ``student``: written answers (left for the instructor) and missing notebooks aside."""
    return {(r["notebook"], r["exercise"]): (float(r["points"]), float(r["max_points"]))
            for r in rows if r["student"] == student and r["status"] not in ("missing", "manual")}


def feedback_text(out: Path, student: str, notebook: str) -> str:
    return html.unescape((out / "feedback" / student / notebook / f"{notebook}.html").read_text())


def test_instructor_solutions_score_every_point_and_never_raise(graded):
    course, out, rows = graded
    got = points(rows, "solved")
    assert len({nb for nb, _ in got}) == len(NOTEBOOKS)
    lost = {k: v for k, v in got.items() if v[0] != v[1]}
    assert not lost, f"the instructor's answers lose points: {lost}"
    total = sum(v[1] for v in got.values())
    assert total >= 65
    for nb in NOTEBOOKS:
        graded_nb = nbformat.read(course / "autograded" / "solved" / nb.stem / nb.name, as_version=4)
        errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(graded_nb.cells) if c.cell_type == "code"
                  for o in c.outputs if o.get("output_type") == "error"]
        assert not errors, f"{nb.name} raises in the sandbox: {errors}"
        assert HIDDEN in "".join(c.source for c in graded_nb.cells), "the hidden tests ran"
        page = feedback_text(out, "solved", nb.stem)
        assert "Hidden tests passed" in page and HIDDEN not in page


def test_the_assignments_reference_beats_the_baseline_in_its_local_check(graded):
    """Notebook 08 scores its reference submission against the baseline with the grader's code."""
    course, _, _ = graded
    nb = next(p for p in NOTEBOOKS if "assignment" in p.stem)
    text = "".join(o.get("text", "") for c in nbformat.read(course / "autograded" / "solved" / nb.stem / nb.name,
                                                             as_version=4).cells
                   if c.cell_type == "code" for o in c.outputs)
    found = re.search(r"quality: yours ([0-9.]+), the baseline's ([0-9.]+)", text)
    assert found, "the local check prints both qualities"
    assert float(found.group(1)) > float(found.group(2)), found.group(0)


def test_unsolved_notebooks_score_nothing(graded):
    _, _, rows = graded
    got = points(rows, "unsolved")
    assert len({nb for nb, _ in got}) == len(NOTEBOOKS)
    free = {k: v for k, v in got.items() if v[0] > 0}
    assert not free, f"points for unsolved exercises: {free}"


@pytest.mark.parametrize("student,table", [("wrong", WRONG), ("library", LIBRARY)])
def test_each_mistake_loses_its_exercise_and_the_feedback_names_it(graded, student, table):
    _, out, rows = graded
    got = points(rows, student)
    caught = {(nb, test) for nb, cells in table.items() for _, test, _ in cells.values()}
    for (nb, exercise), (p, max_p) in got.items():
        if (nb, exercise) in caught:
            assert p == 0, f"{student}: {nb} {exercise} keeps {p} points for a wrong answer"
        else:
            assert p == max_p, f"{student}: {nb} {exercise} loses points although it was answered right"
    for nb, cells in table.items():
        page = feedback_text(out, student, nb)
        for cell, (_, test, says) in cells.items():
            assert says.replace("*", "") in page.replace("*", ""), f"{nb}: feedback for {cell} does not say {says!r}"
        assert HIDDEN not in page and "misconception:" not in page


def test_written_answers_are_left_for_the_instructor(graded):
    _, _, rows = graded
    manual = [r for r in rows if r["status"] == "manual"]
    solved = {r["notebook"] for r in manual if r["student"] == "solved"}
    assert solved == {nb.stem for nb in NOTEBOOKS if nb.stem[:2] >= "02"}, "a written question per notebook from 02"
    assert all(r["points"] == "" and "by hand" in r["reason"] and float(r["max_points"]) > 0 for r in manual)


def test_grades_csv_has_one_row_per_exercise_and_student(graded):
    _, _, rows = graded
    per = defaultdict(int)
    for r in rows:
        per[r["student"]] += 1
    assert per["solved"] == per["unsolved"] >= 3 * len(NOTEBOOKS)
    assert {r["status"] for r in rows} <= {"graded", "missing", "manual"}


def test_the_grade_report_reads_the_class_and_names_where_the_wrong_answers_fail(graded, tmp_path):
    from cbir_kit.report.grades import exercise_table

    _, out, rows = graded
    assert all(r["failed_in"] == "" for r in rows if r["student"] == "solved")
    wrong = [r for r in rows if r["student"] == "wrong" and r["status"] == "graded" and r["points"] != r["max_points"]]
    assert wrong and all(r["failed_in"] in ("visible", "hidden") and r["error"] for r in wrong)
    assert cbir(["grade", "report", str(out / "grades.csv"), "--out", str(tmp_path / "report")]) == 0
    table = exercise_table(rows)
    assert (table["graded"] >= 1).all() and (table["pass rate"] <= 1).all()
    assert "## Exercises" in (tmp_path / "report" / "report.md").read_text()
