"""Stage 7, report: what a class's grades say about each exercise of the graded notebooks (``cbir grade report``).

From the ``grades.csv`` that ``cbir grade autograde`` writes (one row per student and graded cell):

* per exercise: how many students passed it (full points), how many failed its visible test
  (the one they had) and how many passed that but failed the hidden tests, the most common
  error (exception or misconception key), and timeouts or notebooks that could not be graded;
* exercises where at least :data:`HIDDEN_SHARE` of the graded students pass the visible test
  but fail the hidden ones: a sign that the visible test teaches too little;
* per notebook: the spread of grading times (median and slowest), and the timeouts.

Written answers waiting for a hand grade (status ``manual``) are left out of the pass rates.
"""
from __future__ import annotations

import csv
import html
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import write_text
from ..errors import CbirError
from .document import markdown_table, save_figure

HIDDEN_SHARE = 0.25


def read_grades(path) -> list[dict]:
    """The rows of a ``grades.csv``; a missing file or a file of another shape is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(f"grades file {path} does not exist; write it with `cbir grade autograde`")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    needed = {"student", "notebook", "exercise", "points", "max_points", "status", "failed_in", "error", "seconds"}
    if not rows or needed - set(rows[0]):
        raise CbirError(f"{path} is not a grades.csv of this version (it needs the columns {', '.join(sorted(needed))}); "
                        "grade again with `cbir grade autograde`")
    return rows


def exercise_table(rows: list[dict]) -> pd.DataFrame:
    """One row per (notebook, exercise): the counts and shares of the module docstring."""
    out = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["notebook"], row["exercise"]), []).append(row)
    for (notebook, exercise), group in groups.items():
        graded = [r for r in group if r["status"] == "graded"]
        failed = [r for r in graded if r["points"] != r["max_points"]]
        errors = Counter(r["error"] for r in failed if r["error"])
        common = errors.most_common(1)
        hidden = sum(r["failed_in"] == "hidden" for r in graded)
        out.append({"notebook": notebook, "exercise": exercise, "students": len(group), "graded": len(graded),
                    "passed": len(graded) - len(failed),
                    "pass rate": (len(graded) - len(failed)) / len(graded) if graded else np.nan,
                    "visible failed": sum(r["failed_in"] == "visible" for r in graded),
                    "hidden failed": hidden,
                    "most common error": f"{common[0][0]} ({common[0][1]})" if common else "",
                    "timeouts": sum(r["status"] == "timeout" for r in group),
                    "not graded": sum(r["status"] in ("failed", "missing") for r in group),
                    "visible test too weak": bool(graded) and hidden / len(graded) >= HIDDEN_SHARE})
    return pd.DataFrame(out).set_index(["notebook", "exercise"])


def notebook_times(rows: list[dict]) -> pd.DataFrame:
    """Per notebook: graded runs, median and slowest grading time in seconds, timeouts."""
    runs = {(r["student"], r["notebook"]): r for r in rows}.values()   # one row per student and notebook
    out = []
    for notebook in sorted({r["notebook"] for r in runs}):
        mine = [r for r in runs if r["notebook"] == notebook]
        seconds = [float(r["seconds"]) for r in mine if r["status"] == "graded" and r["seconds"]]
        out.append({"notebook": notebook, "graded runs": len(seconds),
                    "median s": float(np.median(seconds)) if seconds else np.nan,
                    "slowest s": max(seconds) if seconds else np.nan,
                    "timeouts": sum(r["status"] == "timeout" for r in mine)})
    return pd.DataFrame(out).set_index("notebook")


def _plot_pass_rates(table: pd.DataFrame):
    import matplotlib.pyplot as plt

    labels = [f"{nb}: {ex}" for nb, ex in table.index]
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.3 * len(labels)), layout="constrained")
    y = np.arange(len(labels))
    ax.barh(y, table["pass rate"].fillna(0), color=["#d73027" if weak else "#4575b4"
                                                    for weak in table["visible test too weak"]])
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="share of graded students with full points",
           title="Pass rate per exercise (red: the visible test lets many hidden failures through)")
    return fig


def write_grade_report(grades_csv, out_dir) -> Path:
    """``report.md``, ``report.html`` and ``pass_rate.png`` in ``out_dir``; returns the Markdown file."""
    rows = read_grades(grades_csv)
    table, times = exercise_table(rows), notebook_times(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_figure(_plot_pass_rates(table), out / "pass_rate.png")
    weak = [f"- {nb}: {ex} ({table.loc[(nb, ex), 'hidden failed']} of {table.loc[(nb, ex), 'graded']} graded "
            "students pass the visible test and fail the hidden ones)" for nb, ex in table.index[table["visible test too weak"]]]
    flat = table.reset_index().set_index("exercise")
    md = [f"# Grades of {len({r['student'] for r in rows})} students", "",
          "## Exercises", "", markdown_table(flat, digits=2), "", "![pass rate per exercise](pass_rate.png)", "",
          "## Visible tests that teach too little", "",
          *(weak or ["None: no exercise has many students who pass the visible test but fail the hidden ones."]), "",
          "## Grading time per notebook", "", markdown_table(times, digits=1), ""]
    write_text(out / "report.md", "\n".join(md))
    page = ["<!doctype html><meta charset='utf-8'><title>Grades</title>",
            f"<h1>Grades of {len({r['student'] for r in rows})} students</h1>", "<h2>Exercises</h2>",
            flat.to_html(float_format=lambda v: f"{v:.2f}"), "<img src='pass_rate.png' alt='pass rate per exercise'>",
            "<h2>Visible tests that teach too little</h2>",
            "<ul>" + "".join(f"<li>{html.escape(w[2:])}</li>" for w in weak) + "</ul>" if weak else "<p>None.</p>",
            "<h2>Grading time per notebook</h2>", times.to_html(float_format=lambda v: f"{v:.1f}")]
    write_text(out / "report.html", "\n".join(page))
    return out / "report.md"
