"""Instructor side, inside the sandbox: the Jupyter kernel nbgrader executes student notebooks with.

``cbir grade autograde`` installs a private kernelspec (``cbir-sandbox``) whose command is
``python -m cbir_kit.grade.kernel {connection_file} [ipykernel args]``.  This launcher runs in
the grader's identity, in the notebook's autograded folder (nbgrader's working directory for
the kernel), and replaces itself with the sandboxed kernel:

* the notebook's folder, without any notebook file, is copied into the private working directory,
  so relative paths to the student's other files work and writes stay private.  No ``.ipynb``
  comes along: during grading nbgrader keeps the notebook *with its hidden tests restored* in that
  folder, and a student's cell could otherwise print them into the feedback;
* the kernel talks to nbgrader over ZeroMQ ``ipc``: Unix sockets in a private runtime folder
  (``KernelManager.ip`` points there) that is bound into the sandbox, because the sandbox has
  no network at all; a readable copy of the connection file goes there too;
* the kernel joins a control group of its own under the grader's (``group``), when there is one;
* settings (mode, limits, ``CBIR_PROFILE``, dataset folders) come from ``$CBIR_GRADE_KERNEL``
  (JSON), set by the grader from the course's ``course.toml``; each dataset folder is mounted
  read-only inside the kernel's private, writable data root (``$CBIR_DATA``);
* joblib is told not to try multiprocessing (it would warn on stderr that the sandbox has no
  ``/dev/shm`` semaphores), so the grader's own environment writes nothing to stderr.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from .cgroup import Groups
from .sandbox import DATA_ROOT, WORK, Limits, Sandbox, SandboxSpec

ENV = "CBIR_GRADE_KERNEL"
NOTEBOOK_DIR = "/sandbox/assignment"


def kernel_command(connection_file: str, extra: list[str], settings: dict,
                   notebook_dir: Path) -> tuple[list[str], str, dict]:
    """``(command, cwd, env)`` that starts the confined kernel for ``notebook_dir`` (module docstring)."""
    sandbox = Sandbox(Limits.from_dict(settings.get("limits")), settings.get("mode", "auto"), settings.get("group"))
    runtime = settings["runtime_dir"]  # holds the ipc sockets (KernelManager.ip points here)
    shared = Path(runtime) / "connection.json"
    shared.write_bytes(Path(connection_file).read_bytes())
    shared.chmod(0o644)
    work = Path(settings["work_dir"])
    env = {"OMP_NUM_THREADS": str(settings.get("threads", 1)), "JOBLIB_MULTIPROCESSING": "0",
           **settings.get("env", {})}
    datasets = settings.get("datasets", {})   # name -> host folder, mounted read-only in the data root
    files = Path(settings["runtime_dir"]).parent / "assignment"   # the student's files, notebooks left out
    shutil.rmtree(files, ignore_errors=True)
    shutil.copytree(notebook_dir, files, symlinks=True, ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    files.chmod(0o755)
    ro = {str(files): NOTEBOOK_DIR}
    if sandbox.isolated:
        ro.update({host: f"{DATA_ROOT}/{name}" for name, host in datasets.items()})
    spec = SandboxSpec(ro=ro, rw={runtime: runtime}, env=env, prepare={"copy_dir": [NOTEBOOK_DIR, WORK]})
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", str(shared), *extra]
    cmd, cwd, env = sandbox.command(argv, spec, work)
    if not sandbox.isolated:
        work.mkdir(parents=True, exist_ok=True)
        data = Path(sandbox.host_path(DATA_ROOT, spec, work))
        data.mkdir(parents=True, exist_ok=True)
        for name, host in datasets.items():   # no mount namespace: links to the host folders
            (data / name).symlink_to(host, target_is_directory=True)
    return cmd, cwd, env


def main(argv: list[str]) -> None:
    settings = json.loads(os.environ[ENV])
    cmd, cwd, env = kernel_command(argv[0], argv[1:], settings, Path.cwd())
    if settings.get("group"):    # the grader removes the group (and kills what is left) after the notebook
        limits = Limits.from_dict(settings.get("limits"))
        Groups.join(Groups(limits.group_memory_mb, limits.nproc, settings["group"]).new())
    os.chdir(cwd)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main(sys.argv[1:])
