"""Instructor side: autograde on a Dask cluster, one sandboxed task per student, merged into the course's gradebook.

The serial autograde grades one notebook after another: a class of 500 with 9 notebooks of 20 s
each is 25 hours.  With ``--cluster`` (:mod:`cbir_kit.cluster`):

1. **One task per student** (:func:`grade_student`, run by a worker): a private copy of the course
   (its settings, ``source/``, ``release/``, a copy of ``gradebook.db`` and that student's
   submissions only) is graded exactly as the serial run grades it (:func:`grade_notebooks`: each
   notebook in the sandbox, in its own nbgrader process, with its time and disk limits).  The
   task returns the notebook runs and the autograded notebooks: executed, test outputs included.
2. **Merge** (this process): the notebooks go into the course's ``executed/`` folder and one
   ``nbgrader autograde --no-execute`` per assignment reads them as the submissions and records
   their grades in the course's own ``gradebook.db``.  Nothing is executed here: nbgrader scores
   each test cell from the outputs the sandboxed run left (an error output is a failed test),
   which is what the serial run scores too.  So grades, ``grades.csv`` and the feedback pages are
   the same as the serial run's; only the grading times differ.
3. Feedback pages and ``grades.csv`` are then made as in the serial run.

On several machines the course folder must be on storage every worker can read (the task copies
from it); the task writes nothing there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from ..cluster import cluster_client, gather_checked
from .course import Course
from .notebook_run import NotebookRun, grade_notebooks, install_kernel, last_error, run_nbgrader
from .sandbox import Limits, Sandbox

GRADING_FOLDERS = {"submitted", "autograded", "feedback", "executed"}
EXECUTED = "executed"


def copy_for_student(course: Path, student: str, dest: Path) -> Path:
    """A private copy of ``course`` holding only ``student``'s submissions (and no grading output)."""
    dest.mkdir(parents=True)
    for entry in course.iterdir():
        if entry.name in GRADING_FOLDERS or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dest / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, dest / entry.name)
    mine = course / "submitted" / student
    if mine.is_dir():
        shutil.copytree(mine, dest / "submitted" / student, symlinks=True)
    return dest


def grade_student(settings: Course, student: str, tasks: dict[str, list[str]], refused: dict, config: list[str],
                  sandbox: tuple[str, dict], notebook_timeout: float) -> tuple[list[NotebookRun], dict[str, bytes]]:
    """Worker task: ``(runs, files)``, the student's notebook runs and ``autograded/<student>/`` as bytes."""
    mode, limits = sandbox
    box = Sandbox(Limits.from_dict(limits), mode)
    with tempfile.TemporaryDirectory(prefix="cbir-autograde-") as tmp, contextlib.closing(box):
        tmp = Path(tmp)
        tmp.chmod(0o755)
        install_kernel(tmp / "jupyter")
        copy = copy_for_student(settings.root, student, tmp / "course")
        runs = grade_notebooks(dataclasses.replace(settings, root=copy), config, tmp, box, student, tasks, refused,
                               notebook_timeout, say=lambda *a, **k: None)
        graded = copy / "autograded" / student
        files = {str(p.relative_to(graded)): p.read_bytes() for p in sorted(graded.rglob("*")) if p.is_file()} \
            if graded.is_dir() else {}
    return runs, files


def autograde_on_cluster(cluster, settings: Course, config: list[str], tmp: Path, box: Sandbox, students: list[str],
                         tasks: dict[str, list[str]], refused: dict, notebook_timeout: float, say=print) -> list[NotebookRun]:
    """Grade each student in a task on ``cluster`` (module docstring); the runs, in the serial run's order."""
    course = settings.root
    sandbox = (box.mode, dict(box.limits.__dict__))
    with cluster_client(cluster) as client:
        futures = [client.submit(grade_student, settings, s, tasks, refused, config, sandbox, notebook_timeout,
                                 pure=False) for s in students]
        done: dict[int, tuple] = {}
        for i, result in gather_checked(client, futures, lambda i: f"grading student {students[i]}"):
            done[i] = result
            for run in result[0]:
                say(f"  {run.student}/{run.assignment}/{run.notebook}: {run.status}"
                    f"{' - ' + run.reason if run.reason else ''}")
    shutil.rmtree(course / EXECUTED, ignore_errors=True)
    for i, student in enumerate(students):
        for name, data in done[i][1].items():
            path = course / EXECUTED / student / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    record_grades(course, config, tasks, tmp, say)
    return [run for i in range(len(students)) for run in done[i][0]]


def record_grades(course: Path, config: list[str], tasks: dict[str, list[str]], tmp: Path, say=print) -> None:
    """``nbgrader autograde --no-execute`` of ``executed/`` into the course's gradebook, one call per assignment."""
    env = {**os.environ, "JUPYTER_PATH": str(tmp / "jupyter")}
    for a in tasks:
        if not any((course / EXECUTED).glob(f"*/{a}")):
            continue
        r = run_nbgrader(course, ["autograde", a, "--no-execute", "--force", *config,
                                  f"--CourseDirectory.submitted_directory={EXECUTED}"], env=env, timeout=1800)
        if r.returncode != 0:
            say(f"  recording the grades of {a} failed: {last_error(r.stdout)}")
