"""Instructor side: ``cbir grade release`` and ``cbir grade autograde``, the nbgrader course graded in one command.

The course is an nbgrader course directory (default ``grading/``): ``nbgrader_config.py`` and
``source/<assignment>/<notebook>.ipynb`` (instructor versions with nbgrader metadata).

``release``   runs ``nbgrader generate_assignment`` for every assignment (student versions in
              ``release/``, grade cells recorded in ``gradebook.db``).
``autograde`` takes ``SUBMISSIONS/<student>/<assignment>/<notebook>.ipynb``, and for every
              student and notebook runs ``nbgrader autograde --notebook`` in its own process:

* every notebook executes in a fresh kernel inside the sandbox (:mod:`cbir_kit.grade.kernel`):
  no network, course directory and gradebook not visible, resource limits;
* a cell that runs longer than ``cell_timeout`` is interrupted and counts as an error
  (nbgrader's ``Execute.timeout``); a notebook whose grading takes longer than
  ``notebook_timeout`` is stopped (its process group and sandbox killed) and scores 0;
* one notebook that fails, crashes or hangs never stops the others.

Outputs in ``OUT``: ``grades.csv`` (student, assignment, notebook, exercise, points, max_points,
status, reason; one row per grade cell) and ``feedback/<student>/<assignment>/<notebook>.html``
(nbgrader ``generate_feedback`` with hidden tests and their outputs removed, see
:mod:`cbir_kit.grade.feedback`).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from .._io import write_text
from ..cluster import parse_cluster
from ..errors import CbirError
from .course import Course, load_course, sync_sources
from .notebook_run import (MANUAL, NotebookRun, grade_notebooks, install_kernel, last_error, run_nbgrader,
                           run_options)
from .sandbox import Limits, Sandbox
from .text import spreadsheet_safe

# failed_in: "" (passed or not run), visible or hidden; error: the exception's name or the misconception key
# of a failed test cell; seconds: how long grading the notebook took (the same on each of its rows)
GRADE_COLUMNS = ["student", "assignment", "notebook", "exercise", "points", "max_points", "status", "reason",
                 "failed_in", "error", "seconds"]


def _course(course: str | Path) -> Course:
    """The course's settings, with ``source/`` refreshed from the instructor notebooks (course.toml)."""
    settings = load_course(course)
    course = settings.root
    if not (course / "nbgrader_config.py").is_file():
        raise CbirError(f"{course} is not an nbgrader course: it has no nbgrader_config.py "
                        "(pass the course folder as course=; the repository's is grading/)")
    sync_sources(settings)
    if not (course / "source").is_dir():
        raise CbirError(f"{course} is not an nbgrader course: it has no source/ folder "
                        f"(expected source/<assignment>/<notebook>.ipynb, or notebooks = FOLDER in {course / 'course.toml'})")
    return settings


def assignments(course: Path) -> dict[str, list[str]]:
    """``assignment -> notebook names`` (without .ipynb) from ``source/``."""
    out = {}
    for a in sorted(p for p in (course / "source").iterdir() if p.is_dir() and not p.name.startswith(".")):
        nbs = sorted(p.stem for p in a.glob("*.ipynb"))
        if nbs:
            out[a.name] = nbs
    if not out:
        raise CbirError(f"{course / 'source'} holds no assignment folders with notebooks")
    return out


def release(course: str | Path = "grading", progress: bool = True) -> list[Path]:
    """``nbgrader generate_assignment`` for every assignment; returns the release folders."""
    course = _course(course).root
    out = []
    for a in assignments(course):
        r = run_nbgrader(course, ["generate_assignment", a, "--force"])
        if r.returncode != 0:
            raise CbirError(f"nbgrader generate_assignment {a} failed in {course}: {last_error(r.stdout)}")
        out.append(course / "release" / a)
        if progress:
            print(f"released {a}: {course / 'release' / a}")
    return out


def _links(folder: Path) -> list[str]:
    """Symbolic links anywhere below ``folder`` (relative paths): a submission may not contain any."""
    found = []
    for root, dirs, files in os.walk(folder):
        found += [str((Path(root) / n).relative_to(folder)) for n in dirs + files if (Path(root) / n).is_symlink()]
    return sorted(found)


def _import_submissions(course: Path, submissions: Path,
                        tasks: dict[str, list[str]]) -> tuple[list[str], dict[tuple[str, str], str]]:
    """Copy ``SUBMISSIONS/<student>/<assignment>/`` into the course's ``submitted/``.

    Returns the students and, per ``(student, assignment)`` that was refused, the reason: a folder
    holding a symbolic link is never copied (a link would be followed as the grader, who can read the
    course, the gradebook and other students' work); it is named in the reason and scores 0.
    """
    submissions = submissions.resolve()
    if not submissions.is_dir():
        raise CbirError(f"submissions folder {submissions} does not exist")
    students = sorted(p.name for p in submissions.iterdir()
                      if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    if not students:
        raise CbirError(f"no student folders in {submissions}: expected <student>/<assignment>/<notebook>.ipynb")
    refused = {}
    if submissions == (course / "submitted").resolve():
        return students, refused
    for student in students:
        for a in tasks:
            src = submissions / student / a
            dst = course / "submitted" / student / a
            shutil.rmtree(dst, ignore_errors=True)
            links = ["."] if src.is_symlink() else _links(src) if src.is_dir() else []
            if links:
                refused[student, a] = (f"the submission holds symbolic links ({', '.join(links[:5])}); links are "
                                       "never followed: hand in plain files")
            elif src.is_dir():
                shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return students, refused


def autograde(submissions: str | Path, course: str | Path = "grading", out_dir: str | Path = "grades",
              cell_timeout: float = 60, notebook_timeout: float = 600, sandbox: str = "auto",
              limits: dict | None = None, progress: bool = True, cluster="none") -> list[dict]:
    """Autograde every student's notebooks (see the module docstring); returns the grades.csv rows.

    ``cluster``: ``"none"`` grades one notebook after another here; ``"local:N"``, an address or a
    ``distributed.Client`` grades one student per task there (:mod:`.parallel`), with the same grades.
    """
    settings = _course(course)
    course = settings.root
    out_dir = Path(out_dir).resolve()
    tasks = assignments(course)
    box = Sandbox(Limits.from_dict({"wall_s": notebook_timeout, **(limits or {})}), sandbox)
    say = print if progress else (lambda *a, **k: None)
    say(f"sandbox: {box.note}")
    say(f"grading kernels: CBIR_PROFILE={settings.profile}, data root {settings.data_root}")
    for a in tasks:
        if not (course / "release" / a).is_dir():
            release(course, progress=progress)
            break
    students, refused = _import_submissions(course, Path(submissions), tasks)
    runs: list[NotebookRun] = []
    with tempfile.TemporaryDirectory(prefix="cbir-autograde-") as tmp:
        tmp = Path(tmp)
        tmp.chmod(0o755)
        install_kernel(tmp / "jupyter")
        config = run_options(cell_timeout, settings.misconceptions)
        if parse_cluster(cluster)[0] == "none":
            for student in students:
                runs += grade_notebooks(settings, config, tmp, box, student, tasks, refused, notebook_timeout, say)
        else:
            from .parallel import autograde_on_cluster
            runs = autograde_on_cluster(cluster, settings, config, tmp, box, students, tasks, refused,
                                        notebook_timeout, say)
        for a in tasks:
            _feedback(course, config, a, [s for s in students if (course / "autograded" / s / a).is_dir()],
                      out_dir, tmp, say)
    rows = _grade_rows(course, tasks, runs)
    _write_csv(rows, out_dir / "grades.csv")
    return rows


def _feedback(course: Path, config: list[str], assignment: str, students: list[str], out_dir: Path,
              tmp: Path, say=print) -> None:
    """Feedback pages of ``students`` for one assignment: one nbgrader call for all of them, then one
    call per student whose page is still missing (so one broken notebook cannot cost the others theirs)."""
    students = sorted(set(students))
    if not students:
        return
    env = {**os.environ, "JUPYTER_PATH": str(tmp / "jupyter")}

    def generate(*only: str) -> str:
        r = run_nbgrader(course, ["generate_feedback", assignment, "--force", *only, *config], env=env, timeout=600)
        return "" if r.returncode == 0 else last_error(r.stdout)

    for student in students:   # no page of an earlier run may pass for this one's
        shutil.rmtree(course / "feedback" / student / assignment, ignore_errors=True)
    generate()
    for student in students:
        src = course / "feedback" / student / assignment
        why = "" if src.is_dir() else generate(f"--student={student}")
        if not src.is_dir():
            say(f"  no feedback page for {student}/{assignment}: {why or 'nbgrader wrote none'}")
        else:
            dst = out_dir / "feedback" / student / assignment
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)


def _grade_rows(course: Path, tasks: dict[str, list[str]], runs: list[NotebookRun]) -> list[dict]:
    """One row per grade cell.  A written answer (a manually graded cell) that nbgrader could not score
    is left to the instructor: status ``manual``, no points yet, the reason says where to grade it."""
    from nbgrader.api import Gradebook, MissingEntry

    rows = []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for run in runs:
            outcomes = _cell_outcomes(course / "autograded" / run.student / run.assignment / f"{run.notebook}.ipynb")
            cells = gb.find_notebook(run.notebook, run.assignment).grade_cells
            for cell in sorted(cells, key=lambda c: c.name):
                points, status, reason = 0.0, run.status, "" if run.status == "graded" else run.reason
                failed_in, error = outcomes.get(cell.name, ("", ""))
                if run.status == "graded":
                    try:
                        grade = gb.find_grade(cell.name, run.notebook, run.assignment, run.student)
                    except MissingEntry:
                        grade = None
                    if grade is not None and grade.needs_manual_grade and grade.manual_score is None:
                        points, status = "", MANUAL
                        reason = "written answer: grade it by hand (nbgrader formgrader), then re-export"
                    elif grade is not None:
                        points = float(grade.score)
                rows.append({"student": run.student, "assignment": run.assignment, "notebook": run.notebook,
                             "exercise": cell.name, "points": points, "max_points": float(cell.max_score),
                             "status": status, "reason": reason, "failed_in": failed_in, "error": error,
                             "seconds": run.seconds})
    return rows


def _cell_outcomes(notebook: Path) -> dict[str, tuple[str, str]]:
    """``{grade_id: (failed_in, error)}`` of the graded test cells of an autograded notebook."""
    from .feedback import outcome

    if not notebook.is_file():
        return {}
    out = {}
    for cell in json.loads(notebook.read_text()).get("cells", []):
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id and cell.get("cell_type") == "code":
            where, error, _ = outcome("".join(cell.get("source", "")), cell.get("outputs", []))
            out[grade_id] = (where, error)
    return out


def _write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=GRADE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    write_text(path, buf.getvalue())
