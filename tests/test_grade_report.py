"""`cbir grade report`: what a class's grades.csv says about each exercise."""
from __future__ import annotations

import csv

import pytest

from cbir_kit.cli import main
from cbir_kit.errors import CbirError
from cbir_kit.grade.nbgrade import GRADE_COLUMNS
from cbir_kit.report.grades import exercise_table, notebook_times, read_grades


def _row(student, exercise, points, status="graded", failed_in="", error="", seconds=12.0, max_points=2.0):
    return {"student": student, "assignment": "nb1", "notebook": "nb1", "exercise": exercise, "points": points,
            "max_points": max_points, "status": status, "reason": "", "failed_in": failed_in, "error": error,
            "seconds": seconds if status == "graded" else ""}


@pytest.fixture
def grades(tmp_path):
    rows = [_row("s1", "a", 2.0), _row("s1", "b", 1.0, max_points=1.0, seconds=10.0),
            _row("s2", "a", 0.0, failed_in="visible", error="AssertionError", seconds=14.0),
            _row("s2", "b", 1.0, max_points=1.0, seconds=14.0),
            _row("s3", "a", 0.0, failed_in="hidden", error="off-by-one", seconds=30.0),
            _row("s3", "b", 0.0, max_points=1.0, failed_in="visible", error="NameError", seconds=30.0),
            _row("s4", "a", 0.0, failed_in="hidden", error="AssertionError", seconds=20.0),
            _row("s4", "b", 1.0, max_points=1.0, seconds=20.0),
            _row("s5", "a", 0.0, status="timeout"), _row("s5", "b", 0.0, status="timeout", max_points=1.0),
            _row("s6", "a", "", status="manual")]
    path = tmp_path / "grades.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=GRADE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_per_exercise_pass_rates_errors_hidden_failures_and_times(grades):
    rows = read_grades(grades)
    table = exercise_table(rows)
    a, b = table.loc[("nb1", "a")], table.loc[("nb1", "b")]
    assert (a["students"], a["graded"], a["passed"], a["visible failed"], a["hidden failed"]) == (6, 4, 1, 1, 2)
    assert a["pass rate"] == 0.25 and a["most common error"] == "AssertionError (2)" and a["timeouts"] == 1
    assert a["visible test too weak"] and not b["visible test too weak"]     # 2 of 4 pass visible, fail hidden
    assert b["pass rate"] == 0.75 and b["most common error"] == "NameError (1)"
    times = notebook_times(rows)
    assert times.loc["nb1", "graded runs"] == 4 and times.loc["nb1", "median s"] == 17.0
    assert times.loc["nb1", "slowest s"] == 30.0 and times.loc["nb1", "timeouts"] == 1


def test_the_command_writes_markdown_html_and_a_plot(grades, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["grade", "report", str(grades), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "visible tests that let many hidden failures through: nb1: a" in printed
    md = (out / "report.md").read_text()
    assert "## Visible tests that teach too little" in md and "- nb1: a (2 of 4 graded students" in md
    assert "<h2>Grading time per notebook</h2>" in (out / "report.html").read_text()
    assert (out / "pass_rate.png").stat().st_size > 5_000


def test_a_missing_or_old_grades_file_is_one_clear_error(tmp_path):
    with pytest.raises(CbirError, match="does not exist; write it with `cbir grade autograde`"):
        read_grades(tmp_path / "nope.csv")
    old = tmp_path / "old.csv"
    old.write_text("student,assignment,notebook,exercise,points,max_points,status,reason\ns,a,n,e,1,1,graded,\n")
    with pytest.raises(CbirError, match="not a grades.csv of this version"):
        read_grades(old)
