"""Instructor side: grading one student's notebook with nbgrader, in the sandbox, within its time and disk limits.

:func:`grade_one` runs ``nbgrader autograde --notebook`` for one notebook in its own process, the
kernel inside the sandbox (:mod:`cbir_kit.grade.kernel`); :func:`grade_notebooks` does it for each
notebook a student handed in.  Both the serial autograde (:mod:`.nbgrade`) and the one-task-per-student
autograde on a cluster (:mod:`.parallel`) grade through these functions.
"""
from __future__ import annotations

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

from .course import Course
from .sandbox import Sandbox

KERNEL_NAME = "cbir-sandbox"

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


def run_options(cell_timeout: float, catalogue: Path | None = None) -> list[str]:
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


def run_nbgrader(course: Path, args: list[str], env: dict | None = None, timeout: float | None = None,
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


def last_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "[ERROR]" in ln or "Error" in ln]
    return (errors or lines or ["no output"])[-1][-300:]


def install_kernel(folder: Path) -> None:
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "cbir_kit.grade.kernel", "{connection_file}"],
            "display_name": "Python (cbir sandbox)", "language": "python",
            "interrupt_mode": "message"}  # a signal would reach bwrap, not the kernel
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def grade_notebooks(settings: Course, config: list[str], tmp: Path, box: Sandbox, student: str,
                    tasks: dict[str, list[str]], refused: dict, notebook_timeout: float, say=print) -> list[NotebookRun]:
    """Grade each notebook ``student`` handed in (a refused or missing one gets its reason), in order."""
    runs = []
    for a, notebooks in tasks.items():
        for nb in notebooks:
            if (student, a) in refused:
                runs.append(NotebookRun(student, a, nb, "failed", refused[student, a]))
            elif not (settings.root / "submitted" / student / a / f"{nb}.ipynb").is_file():
                runs.append(NotebookRun(student, a, nb, "missing", "notebook not submitted"))
            else:
                runs.append(grade_one(settings, config, tmp, box, student, a, nb, notebook_timeout, say))
                say(f"  {student}/{a}/{nb}: {runs[-1].status}{' - ' + runs[-1].reason if runs[-1].reason else ''}")
    return runs


def grade_one(settings: Course, config: list[str], tmp: Path, box: Sandbox, student: str, assignment: str,
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
        r = run_nbgrader(course, args, env=env, timeout=notebook_timeout, quota=(run_dir, box.limits.work_mb << 20))
    except subprocess.TimeoutExpired:
        drop_autograded(course, student, assignment, nb)
        return NotebookRun(student, assignment, nb, "timeout",
                           f"grading the notebook took longer than {notebook_timeout:g} s; stopped",
                           round(notebook_timeout, 1))
    except DiskQuotaExceeded as err:
        drop_autograded(course, student, assignment, nb)
        return NotebookRun(student, assignment, nb, "failed", f"stopped: the notebook {err} (limit work_mb)")
    finally:
        box.close()   # the kernel's control group, and anything it left running
        shutil.rmtree(run_dir, ignore_errors=True)
    if r.returncode != 0 or not (course / "autograded" / student / assignment / f"{nb}.ipynb").is_file():
        return NotebookRun(student, assignment, nb, "failed", f"autograde failed: {last_error(r.stdout)}")
    seconds = round(time.perf_counter() - t0, 1)
    return NotebookRun(student, assignment, nb, "graded", f"{seconds} s", seconds)


def drop_autograded(course: Path, student: str, assignment: str, nb: str) -> None:
    (course / "autograded" / student / assignment / f"{nb}.ipynb").unlink(missing_ok=True)
