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
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .._io import write_text
from ..errors import CbirError
from .course import Course, load_course, sync_sources
from .sandbox import Limits, Sandbox
from .text import spreadsheet_safe

KERNEL_NAME = "cbir-sandbox"
# failed_in: "" (passed or not run), visible or hidden; error: the exception's name or the misconception key
# of a failed test cell; seconds: how long grading the notebook took (the same on each of its rows)
GRADE_COLUMNS = ["student", "assignment", "notebook", "exercise", "points", "max_points", "status", "reason",
                 "failed_in", "error", "seconds"]

FEEDBACK_PREPROCESSORS = ["nbgrader.preprocessors.GetGrades", "cbir_kit.grade.feedback.HideHiddenTestOutputs",
                          "nbgrader.preprocessors.ClearHiddenTests",
                          "nbconvert.preprocessors.sanitize.SanitizeHTML",   # no student script reaches the instructor's browser
                          "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor"]
# nbgrader's own list with Execute replaced by GuardedExecute (the tests run in a fresh kernel that holds
# only the student's definitions, see isolate.py) and one step added after it: only an exception fails
# a test cell (nbgrader would also score a cell that wrote to stderr, a warning for example, as 0).
AUTOGRADE_PREPROCESSORS = ["cbir_kit.grade.isolate.GuardedExecute", "cbir_kit.grade.feedback.StderrIsNotAFailure",
                           "nbgrader.preprocessors.IgnorePattern",
                           "nbconvert.preprocessors.ClearMetadataPreprocessor", "nbgrader.preprocessors.LimitOutput",
                           "nbgrader.preprocessors.SaveAutoGrades", "nbgrader.preprocessors.AssignLatePenalties",
                           "nbgrader.preprocessors.CheckCellMetadata"]
MANUAL = "manual"   # status of a written answer: nbgrader leaves it for the instructor (formgrader)


def _run_options(cell_timeout: float, catalogue: Path | None = None) -> list[str]:
    """Command-line settings for this run; they take precedence over the course's nbgrader_config.py."""
    return [*([f"--HideHiddenTestOutputs.catalogue={catalogue}"] if catalogue else []),
            f"--Execute.timeout={int(cell_timeout)}", f"--Execute.kernel_name={KERNEL_NAME}",
            "--KernelManager.transport=ipc",
            f"--Autograde.autograde_preprocessors={json.dumps(AUTOGRADE_PREPROCESSORS)}",
            f"--GenerateFeedback.preprocessors={json.dumps(FEEDBACK_PREPROCESSORS)}",
            "--SanitizeHTML.enabled=True"]   # nbconvert's own preprocessors are off unless enabled


@dataclass
class NotebookRun:
    student: str
    assignment: str
    notebook: str
    status: str   # graded | failed | timeout | missing
    reason: str = ""
    seconds: float | str = ""   # how long grading took ("" when it did not run)


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


class DiskQuotaExceeded(Exception):
    """The grading of one notebook wrote more than its quota into its host folder."""


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _nbgrader(course: Path, args: list[str], env: dict | None = None, timeout: float | None = None,
              quota: tuple[Path, int] | None = None) -> subprocess.CompletedProcess:
    """Run nbgrader; stop it (its whole process group) after ``timeout`` s, or as soon as the folder of
    ``quota = (folder, bytes)`` holds more than that many bytes (checked every second)."""
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course}"]
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # nbgrader calls alembic
    proc = subprocess.Popen(cmd, cwd=course, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            out, _ = proc.communicate(timeout=1.0)
            return subprocess.CompletedProcess(cmd, proc.returncode, out, "")
        except subprocess.TimeoutExpired:
            over = quota is not None and _folder_bytes(quota[0]) > quota[1]
            if not over and (deadline is None or time.monotonic() < deadline):
                continue
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            if over:
                raise DiskQuotaExceeded(f"wrote more than {quota[1] >> 20} MB into its folder") from None
            raise subprocess.TimeoutExpired(cmd, timeout) from None


def _last_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "[ERROR]" in ln or "Error" in ln]
    return (errors or lines or ["no output"])[-1][-300:]


def release(course: str | Path = "grading", progress: bool = True) -> list[Path]:
    """``nbgrader generate_assignment`` for every assignment; returns the release folders."""
    course = _course(course).root
    out = []
    for a in assignments(course):
        r = _nbgrader(course, ["generate_assignment", a, "--force"])
        if r.returncode != 0:
            raise CbirError(f"nbgrader generate_assignment {a} failed in {course}: {_last_error(r.stdout)}")
        out.append(course / "release" / a)
        if progress:
            print(f"released {a}: {course / 'release' / a}")
    return out


def _install_kernel(folder: Path) -> None:
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "cbir_kit.grade.kernel", "{connection_file}"],
            "display_name": "Python (cbir sandbox)", "language": "python",
            "interrupt_mode": "message"}  # a signal would reach bwrap, not the kernel
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


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
              limits: dict | None = None, progress: bool = True) -> list[dict]:
    """Autograde every student's notebooks (see the module docstring); returns the grades.csv rows."""
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
        _install_kernel(tmp / "jupyter")
        config = _run_options(cell_timeout, settings.misconceptions)
        for student in students:
            for a, notebooks in tasks.items():
                for nb in notebooks:
                    if (student, a) in refused:
                        runs.append(NotebookRun(student, a, nb, "failed", refused[student, a]))
                        continue
                    if not (course / "submitted" / student / a / f"{nb}.ipynb").is_file():
                        runs.append(NotebookRun(student, a, nb, "missing", "notebook not submitted"))
                        continue
                    runs.append(_grade_one(settings, config, tmp, box, student, a, nb, notebook_timeout, say))
                    say(f"  {student}/{a}/{nb}: {runs[-1].status}{' - ' + runs[-1].reason if runs[-1].reason else ''}")
        for a in tasks:
            _feedback(course, config, a, [s for s in students if (course / "autograded" / s / a).is_dir()],
                      out_dir, tmp, say)
    rows = _grade_rows(course, tasks, runs)
    _write_csv(rows, out_dir / "grades.csv")
    return rows


def _grade_one(settings: Course, config: list[str], tmp: Path, box: Sandbox, student: str, assignment: str,
               nb: str, notebook_timeout: float, say=print) -> NotebookRun:
    course = settings.root
    run_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="run-"))
    runtime = run_dir / "runtime"
    runtime.mkdir()
    runtime.chmod(0o777)  # the kernel, maybe running as nobody, creates its sockets here
    run_dir.chmod(0o755)
    env, datasets, missing = settings.kernel_data(nb)
    if missing:
        say(f"  note: {nb} lists dataset(s) {', '.join(missing)} that {settings.data_root} does not have")
    kernel = {"mode": box.mode, "limits": {**box.limits.__dict__}, "work_dir": str(run_dir / "work"),
              "runtime_dir": str(runtime), "threads": 1, "env": env, "datasets": datasets,
              "group": box.groups.name if box.groups else None}
    env = {**os.environ, "JUPYTER_PATH": str(tmp / "jupyter"), "JUPYTER_RUNTIME_DIR": str(runtime),
           "CBIR_GRADE_KERNEL": json.dumps(kernel)}
    args = ["autograde", assignment, f"--student={student}", f"--notebook={nb}", "--force", *config,
            f"--KernelManager.ip={runtime / 'kernel'}"]
    t0 = time.perf_counter()
    try:
        r = _nbgrader(course, args, env=env, timeout=notebook_timeout, quota=(run_dir, box.limits.work_mb << 20))
    except subprocess.TimeoutExpired:
        _drop_autograded(course, student, assignment, nb)
        return NotebookRun(student, assignment, nb, "timeout",
                           f"grading the notebook took longer than {notebook_timeout:g} s; stopped",
                           round(notebook_timeout, 1))
    except DiskQuotaExceeded as err:
        _drop_autograded(course, student, assignment, nb)
        return NotebookRun(student, assignment, nb, "failed", f"stopped: the notebook {err} (limit work_mb)")
    finally:
        box.close()   # the kernel's control group, and anything it left running
        shutil.rmtree(run_dir, ignore_errors=True)
    if r.returncode != 0 or not (course / "autograded" / student / assignment / f"{nb}.ipynb").is_file():
        return NotebookRun(student, assignment, nb, "failed", f"autograde failed: {_last_error(r.stdout)}")
    seconds = round(time.perf_counter() - t0, 1)
    return NotebookRun(student, assignment, nb, "graded", f"{seconds} s", seconds)


def _drop_autograded(course: Path, student: str, assignment: str, nb: str) -> None:
    (course / "autograded" / student / assignment / f"{nb}.ipynb").unlink(missing_ok=True)


def _feedback(course: Path, config: list[str], assignment: str, students: list[str], out_dir: Path,
              tmp: Path, say=print) -> None:
    """Feedback pages of ``students`` for one assignment: one nbgrader call for all of them, then one
    call per student whose page is still missing (so one broken notebook cannot cost the others theirs)."""
    students = sorted(set(students))
    if not students:
        return
    env = {**os.environ, "JUPYTER_PATH": str(tmp / "jupyter")}

    def generate(*only: str) -> str:
        r = _nbgrader(course, ["generate_feedback", assignment, "--force", *only, *config], env=env, timeout=600)
        return "" if r.returncode == 0 else _last_error(r.stdout)

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
