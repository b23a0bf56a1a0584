"""Instructor side: run untrusted student code in its own process, confined.

Two levels, chosen once per grading run (:func:`resolve_mode`):

``bwrap`` (Linux with bubblewrap, ``apt-get install bubblewrap``)
    A new mount, PID, IPC, UTS and network namespace.  The only things visible are the
    system directories (``/usr``, ``/etc``, ...) and the Python installation, read-only; the
    submission's own files, read-only; the staged input images, read-only; and a private
    writable ``tmpfs`` (the working directory, size-limited).  No network (only a loopback
    device of its own), so a connection to the grader's ``127.0.0.1`` is refused.  The course
    directory, hidden tests, gradebook, dataset labels and the user's home are simply not
    there.  When the grader runs as root, each sandbox runs as a user id of its own (see ``confine.py``).
    Killing the sandbox kills every process in it (PID namespace).

``rlimits`` (no bubblewrap: macOS, Windows/WSL without it, containers that forbid namespaces)
    Only the resource limits below and a private temporary working directory; the code runs as
    the grading user, so it can read (and, being the owner, chmod) whatever that user can, keep
    files outside its working directory, and use the network.  Every report says so.

Resource limits in both modes (:class:`Limits`): CPU time, address space, file size, number
of processes/threads, open files (set by ``confine.py`` just before the program starts),
plus wall time and total output size, which the grader enforces from outside by killing the
process group.  Where the grader may make control groups (:mod:`cbir_kit.grade.cgroup`), each
sandboxed process and everything it starts also share one memory and one process budget of their
own; elsewhere those limits hold per process, and the sandbox's note says so.  Under bubblewrap
the working folder and ``/tmp`` are size-limited tmpfs mounts (``work_mb``, ``tmp_mb``).
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CbirError
from .cgroup import Groups, groups_available

CONFINE = Path(__file__).with_name("confine.py")
SANDBOX_UID_BASE = 200_000  # a root grader runs each sandbox as a user of its own from here (no login, no files)
MODES = ("auto", "bwrap", "rlimits")
SANDBOX_ROOT = "/sandbox"
WORK = f"{SANDBOX_ROOT}/work"
DATA_ROOT = f"{WORK}/.cbir_data"   # $CBIR_DATA of sandboxed code: private and writable


@dataclass
class Limits:
    """Per-process resource limits of a sandboxed run (the defaults suit a CNN on a laptop)."""

    cpu_s: int = 600             # CPU seconds per process (RLIMIT_CPU)
    wall_s: float = 900.0        # wall-clock seconds for the whole run, enforced by the grader
    memory_mb: int = 8192        # address space per process (RLIMIT_AS); torch alone maps ~3 GB
    file_mb: int = 64            # largest file it may write (RLIMIT_FSIZE)
    work_mb: int = 512           # size of the private working tmpfs (bwrap mode)
    tmp_mb: int = 256            # size of the private /tmp tmpfs (bwrap mode)
    output_bytes: int = 1_000_000  # challenge: stdout + stderr; more kills the run ("output limit")
    notebook_output_mb: int = 32  # autograde: outputs one notebook may produce; more fails the cell
    nproc: int = 256             # processes + threads (RLIMIT_NPROC; with a cgroup, pids.max of the sandbox)
    nofile: int = 256            # open files (RLIMIT_NOFILE)
    group_memory_mb: int = 6144  # memory of all the sandbox's processes together (cgroup, when available)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Limits":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise CbirError(f"unknown sandbox limit(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


@functools.lru_cache(maxsize=None)
def bwrap_status() -> tuple[bool, str]:
    """Whether bubblewrap works here, and why not when it does not (it is actually tried once)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap (bwrap) is not installed; on Debian/Ubuntu: apt-get install bubblewrap"
    args = [exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--unshare-pid",
            "--unshare-ipc", "--die-with-parent"]
    if os.getuid() != 0:
        args.append("--unshare-user")
    try:
        r = subprocess.run(args + ["true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"bwrap could not run: {err}"
    if r.returncode != 0:
        return False, (f"bwrap is installed but cannot create namespaces here ({r.stderr.strip()}); "
                       "unprivileged user namespaces are probably disabled")
    return True, "bwrap works"


def resolve_mode(mode: str = "auto") -> tuple[str, str]:
    """``(mode, note)``: ``bwrap`` when asked for or available, else ``rlimits`` with the reason."""
    if mode not in MODES:
        raise CbirError(f"sandbox mode must be one of {', '.join(MODES)}; got {mode!r}")
    ok, why = bwrap_status()
    if mode == "bwrap" and not ok:
        raise CbirError(f"sandbox mode 'bwrap' was asked for but {why}")
    if mode == "rlimits" or not ok:
        reason = "asked for" if mode == "rlimits" else why
        return "rlimits", (f"REDUCED ISOLATION ({reason}): submissions run with CPU, memory, process, file "
                           "and output limits only; they can read files the grader can read and use the network")
    return "bwrap", ("isolated with bubblewrap: read-only system, no network, private working directory, "
                     "course files and labels not visible, plus CPU, memory, process, file and output limits")


def _python_roots() -> list[Path]:
    """The Python installation (venv and base) and packages the grader imports from outside it."""
    roots = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.exec_prefix).resolve()}
    roots.add(Path(__file__).resolve().parents[1])  # the cbir_kit folder: editable installs live in the repository
    return sorted(roots)


def _ancestors(dest: str) -> list[str]:
    parts = Path(dest).parts
    return [str(Path(*parts[:i])) for i in range(2, len(parts))]


@dataclass
class SandboxSpec:
    """What one sandboxed process sees: ``ro`` and ``rw`` binds map host paths to sandbox paths."""

    ro: dict[str, str] = field(default_factory=dict)
    rw: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = WORK
    prepare: dict = field(default_factory=dict)  # copy_dir for confine.py


class Sandbox:
    """Builds and starts confined processes in one mode with one set of limits."""

    def __init__(self, limits: Limits | None = None, mode: str = "auto", group_parent: str | None = None):
        self.limits = limits or Limits()
        self.mode, self.note = resolve_mode(mode)
        ok, why = groups_available()
        self.groups = Groups(self.limits.group_memory_mb, self.limits.nproc, group_parent) if ok else None
        self.note += (f"; each sandbox in its own control group ({why}): {self.limits.group_memory_mb} MB and "
                      f"{self.limits.nproc} processes for all its processes together" if ok else f"; {why}")

    @property
    def isolated(self) -> bool:
        return self.mode == "bwrap"

    def _confine_limits(self, spec: SandboxSpec, work_dir: Path) -> dict:
        d = {k: [p if self.isolated else _unsandbox(p, spec, work_dir) for p in v] for k, v in spec.prepare.items()}
        d.update({k: v for k, v in asdict(self.limits).items() if k in ("cpu_s", "memory_mb", "file_mb", "nproc", "nofile")})
        if os.getuid() == 0:
            if self.isolated:
                uid = sandbox_uid()
                d.update(uid=uid, gid=uid)
            else:
                d["nproc"] = None  # root ignores RLIMIT_NPROC and cannot leave root here (see notes)
        elif not self.isolated:
            base = _count_user_processes()
            if base is None:
                d["nproc"] = None  # no /proc to count the user's processes: leave the limit unset
            else:
                d["nproc_base"] = base
        return d

    def command(self, argv: list[str], spec: SandboxSpec, work_dir: Path) -> tuple[list[str], str, dict]:
        """``(command, cwd, env)`` that runs ``argv`` confined; ``work_dir`` backs the working dir in rlimits mode."""
        confine = [sys.executable, "-I", str(CONFINE.resolve()), json.dumps(self._confine_limits(spec, work_dir)), "--"]
        if not self.isolated:
            argv, cwd, env = self.host_command(argv, spec, work_dir)
            return confine + argv, cwd, env
        env = {**_base_env(), "HOME": WORK, "TMPDIR": WORK, "CBIR_CACHE": f"{WORK}/.cbir_cache",
               "CBIR_DATA": DATA_ROOT, **spec.env}
        cmd = [shutil.which("bwrap"), "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
               "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox", "--clearenv"]
        if os.getuid() == 0:
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]  # confine.py drops to the sandbox's own user
        else:
            cmd += ["--unshare-user"]
        made: set[str] = set()

        def mkdirs(dest: str) -> None:
            for d in _ancestors(dest):
                if d not in made and d not in ("/usr", "/etc"):
                    private = d.startswith(WORK + "/")   # inside the writable tmpfs: writable, as the rest of it
                    cmd.extend(["--perms", "1777" if private else "0755", "--dir", d])
                    made.add(d)

        for top in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            p = Path(top)
            if p.is_symlink():
                cmd += ["--symlink", os.readlink(p), top]
            elif p.is_dir():
                cmd += ["--ro-bind", top, top]
        cmd += ["--dev", "/dev", "--proc", "/proc",
                "--perms", "1777", "--size", str(self.limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        for root in _python_roots():
            if not str(root).startswith(("/usr/", "/etc/")):
                mkdirs(str(root))
                cmd += ["--ro-bind", str(root), str(root)]
        mkdirs(WORK)
        cmd += ["--perms", "1777", "--size", str(self.limits.work_mb * 1024 * 1024), "--tmpfs", WORK]
        for binds, flag in ((spec.ro, "--ro-bind"), (spec.rw, "--bind")):
            for host, dest in binds.items():
                mkdirs(dest)
                cmd += [flag, str(host), dest]
        for k, v in env.items():
            cmd += ["--setenv", k, v]
        cmd += ["--chdir", spec.cwd, "--"]
        return cmd + confine + argv, "/", os.environ.copy()

    def host_command(self, argv: list[str], spec: SandboxSpec, work_dir: Path) -> tuple[list[str], str, dict]:
        """rlimits mode before confinement: ``argv`` with host paths, ``work_dir`` as cwd, $HOME and $TMPDIR."""
        home = str(work_dir)
        env = {**_base_env(), "HOME": home, "TMPDIR": home, "CBIR_CACHE": f"{home}/.cbir_cache",
               "CBIR_DATA": _unsandbox(DATA_ROOT, spec, work_dir),
               **{k: _unsandbox(v, spec, work_dir) for k, v in spec.env.items()}}
        return [_unsandbox(a, spec, work_dir) for a in argv], home, env

    def host_path(self, value: str, spec: SandboxSpec, work_dir: Path) -> str:
        """A sandbox path as the confined process sees it (in rlimits mode: the host path)."""
        return value if self.isolated else _unsandbox(value, spec, work_dir)

    def popen(self, argv: list[str], spec: SandboxSpec, work_dir: Path, **kwargs) -> subprocess.Popen:
        """Start ``argv`` confined, in a new session (so the grader can kill the whole group)."""
        cmd, cwd, env = self.command(argv, spec, work_dir)
        if not self.isolated:
            os.chmod(work_dir, 0o700)
        group = self.groups.new() if self.groups else []
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True,
                                preexec_fn=(lambda: Groups.join(group)) if group else None, **kwargs)
        proc.cbir_group = group   # kill_group() removes it
        return proc

    def close(self) -> None:
        """Remove this run's control groups (and kill anything left in them)."""
        if self.groups:
            self.groups.close()


_UIDS = itertools.count()


def sandbox_uid() -> int:
    """A user id for one sandbox: its own process budget (RLIMIT_NPROC counts per user, host-wide),
    different from every other sandbox of this grader and, by the process id, of other graders."""
    return SANDBOX_UID_BASE + (os.getpid() * 1000 + next(_UIDS)) % 1_000_000


def _base_env() -> dict[str, str]:
    """The environment every confined process starts from (nothing of the grader's own)."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
            "OMP_WAIT_POLICY": "PASSIVE"}   # idle OpenMP threads sleep (cbir_kit.cli.app.quiet_openmp)


def _unsandbox(value: str, spec: SandboxSpec, work_dir: Path) -> str:
    """In rlimits mode there is no mount namespace: map sandbox paths back to the host paths."""
    for host, dest in sorted({**spec.ro, **spec.rw}.items(), key=lambda kv: -len(kv[1])):
        if value == dest or value.startswith(dest + "/"):
            return str(host) + value[len(dest):]
    if value == WORK or value.startswith(WORK + "/"):
        return str(work_dir) + value[len(WORK):]
    return value


def _count_user_processes() -> int | None:
    """Processes and threads of this user right now (RLIMIT_NPROC counts all of them); None if unknown."""
    uid = str(os.getuid())
    n = 0
    try:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/status") as fh:
                    fields = dict(line.split(":", 1) for line in fh if ":" in line)
            except OSError:
                continue
            if fields.get("Uid", "").split()[:1] == [uid]:
                n += int(fields.get("Threads", "1").strip() or 1)
    except OSError:
        return None
    return n


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the process and its whole process group (the sandbox's PID namespace dies with it)."""
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    Groups.remove(getattr(proc, "cbir_group", []))
