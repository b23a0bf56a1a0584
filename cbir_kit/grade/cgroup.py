"""Instructor side: memory and process limits for a whole sandbox, with a control group when the grader may make one.

``RLIMIT_AS`` and ``RLIMIT_NPROC`` (:mod:`cbir_kit.grade.confine`) bound each *process*: a submission
that starts eight processes may use eight times the memory, and the process count is per user.  A
control group bounds everything the sandbox starts, together::

    memory used by all its processes  <=  memory_mb        (v2 memory.max, v1 memory.limit_in_bytes)
    processes and threads             <=  nproc            (pids.max)

Making one needs write access to the cgroup file system: the grader runs as root, or systemd
delegated a cgroup v2 subtree to it (``systemd-run --user --scope -p Delegate=yes cbir grade ...``).
Elsewhere :func:`groups_available` says why not, every report says so, and the limits stay per
process (the documented fallback).  Each sandboxed process gets a group of its own under one parent
per grading run (:class:`Groups`); when the process ends, whatever is left in its group is killed and
the group removed.
"""
from __future__ import annotations

import functools
import itertools
import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _v2_base() -> Path | None:
    """Where this process may make v2 groups with the memory and pids controllers, or None."""
    if not (ROOT / "cgroup.controllers").is_file():
        return None
    try:
        own = next(line.split("::", 1)[1].strip() for line in open("/proc/self/cgroup") if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    for base in (ROOT, ROOT / own.lstrip("/")):   # root's top level, or a subtree delegated to us
        try:
            enabled = (base / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        if {"memory", "pids"} <= set(enabled) and os.access(base, os.W_OK):
            return base
    return None


def _v1_bases() -> dict[str, Path] | None:
    bases = {c: ROOT / c for c in ("memory", "pids")}
    if all((b / "cgroup.procs").is_file() and os.access(b, os.W_OK) for b in bases.values()):
        return bases
    return None


@functools.lru_cache(maxsize=None)
def groups_available() -> tuple[bool, str]:
    """Whether sandboxes get a control group here, and why not when they do not."""
    if _v2_base() is not None:
        return True, "cgroup v2"
    if _v1_bases() is not None:
        return True, "cgroup v1"
    return False, ("no writable control group (run the grader as root, or under systemd with a delegated "
                   "cgroup); memory and process limits hold per process only")


class Groups:
    """One parent group per grading run; :meth:`new` makes a limited group for one sandboxed process."""

    _count = itertools.count()

    def __init__(self, memory_mb: int, nproc: int, parent: str | None = None):
        self.memory = memory_mb * 1024 * 1024
        self.nproc = nproc
        name = parent or f"cbir-{os.getpid()}-{next(self._count)}"
        v2 = _v2_base()
        if v2 is not None:
            self.parents = {"": v2 / name}
        else:
            self.parents = {c: base / name for c, base in (_v1_bases() or {}).items()}
        self.name = name
        if parent is None:
            self._remove_stale()

    def _remove_stale(self) -> None:
        """Groups of graders that died without cleaning up (``cbir-<pid>-<n>`` of a pid that is gone)."""
        for parent in self.parents.values():
            for old in parent.parent.glob("cbir-*-*"):
                pid = old.name.split("-")[1]
                if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    self.remove([p for p in old.iterdir() if p.is_dir()])
                    try:
                        old.rmdir()
                    except OSError:
                        pass

    def new(self) -> list[Path]:
        """A fresh group (its folders, one per v1 hierarchy) with this run's limits."""
        child = f"p{os.getpid()}-{next(self._count)}"
        made = []
        for controller, parent in self.parents.items():
            if not controller:   # v2: the parent enables the controllers for its children
                parent.mkdir(exist_ok=True)
                (parent / "cgroup.subtree_control").write_text("+memory +pids")
            else:
                parent.mkdir(exist_ok=True)
            path = parent / child
            path.mkdir()
            made.append(path)
            limits = {"": {"memory.max": self.memory, "memory.swap.max": 0, "pids.max": self.nproc},
                      "memory": {"memory.limit_in_bytes": self.memory, "memory.memsw.limit_in_bytes": self.memory},
                      "pids": {"pids.max": self.nproc}}[controller]
            for key, value in limits.items():
                if (path / key).exists():
                    (path / key).write_text(str(value))
        return made

    @staticmethod
    def join(paths: list[Path], pid: int | None = None) -> None:
        """Move process ``pid`` (default: this one) into the group; its children stay there."""
        for path in paths:
            (path / "cgroup.procs").write_text(str(pid or os.getpid()))

    @staticmethod
    def remove(paths: list[Path]) -> None:
        """Kill what is left in the group and remove it."""
        for path in paths:
            for _ in range(50):
                try:
                    pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
            try:
                path.rmdir()
            except OSError:
                pass

    def close(self) -> None:
        """Remove the run's parent groups and any child left behind."""
        for parent in self.parents.values():
            if parent.is_dir():
                self.remove([p for p in parent.iterdir() if p.is_dir()])
                try:
                    parent.rmdir()
                except OSError:
                    pass
