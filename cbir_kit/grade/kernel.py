"""A Jupyter kernel that runs inside the sandbox: what nbgrader executes student notebooks with.

``cbir grade autograde`` installs a private kernelspec (``cbir-sandbox``) whose command is
``python -m cbir_kit.grade.kernel {connection_file} [ipykernel args]``.  This launcher runs in
the grader's identity, in the notebook's autograded folder (nbgrader's working directory for
the kernel), and replaces itself with the sandboxed kernel:

* the notebook folder is bound read-only and copied into the private working directory, so
  relative paths work and writes stay private;
* the kernel talks to nbgrader over ZeroMQ ``ipc``: Unix sockets in a private runtime folder
  (``KernelManager.ip`` points there) that is bound into the sandbox, because the sandbox has
  no network at all; a readable copy of the connection file goes there too;
* settings (mode and limits) come from ``$CBIR_GRADE_KERNEL`` (JSON), set by the grader.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .sandbox import WORK, Limits, Sandbox, SandboxSpec

ENV = "CBIR_GRADE_KERNEL"
NOTEBOOK_DIR = "/sandbox/assignment"


def kernel_command(connection_file: str, extra: list[str], settings: dict, notebook_dir: Path) -> list[str]:
    sandbox = Sandbox(Limits.from_dict(settings.get("limits")), settings.get("mode", "auto"))
    runtime = settings["runtime_dir"]  # holds the ipc sockets (KernelManager.ip points here)
    shared = Path(runtime) / "connection.json"
    shared.write_bytes(Path(connection_file).read_bytes())
    shared.chmod(0o644)
    work = Path(settings["work_dir"])
    spec = SandboxSpec(ro={str(notebook_dir): NOTEBOOK_DIR}, rw={runtime: runtime},
                       env={"OMP_NUM_THREADS": str(settings.get("threads", 1))},
                       prepare={"copy_dir": [NOTEBOOK_DIR, WORK]})
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", str(shared), *extra]
    cmd, cwd, env = sandbox.command(argv, spec, work)
    if not sandbox.isolated:
        work.mkdir(parents=True, exist_ok=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    return cmd


def main(argv: list[str]) -> None:
    settings = json.loads(os.environ[ENV])
    cmd = kernel_command(argv[0], argv[1:], settings, Path.cwd())
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
