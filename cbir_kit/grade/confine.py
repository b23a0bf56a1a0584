"""Instructor side, inside the sandbox: drop privileges, set resource limits, exec the untrusted target.

Run as a plain script with the interpreter's isolated mode (``python -I confine.py LIMITS -- ARGV``)
inside the sandbox, so it imports only the standard library.  ``LIMITS`` is a JSON object:

* ``uid`` / ``gid`` (optional): switch to this user before anything else.  Used when the grader
  runs as root: root ignores ``RLIMIT_NPROC`` and owns most files, so submissions never keep it.
* ``cpu_s``  -> ``RLIMIT_CPU`` (soft; the hard limit is 2 s later, then the kernel kills),
* ``memory_mb`` -> ``RLIMIT_AS`` (address space; a too-large allocation fails with MemoryError),
* ``file_mb`` -> ``RLIMIT_FSIZE`` (largest file it may write; beyond it: SIGXFSZ),
* ``nproc`` -> ``RLIMIT_NPROC`` (processes *and threads* of the user; bounds fork bombs),
* ``nofile`` -> ``RLIMIT_NOFILE``; core dumps are always off.

Before that, ``copy_dir`` = ``[SRC, DEST]`` is copied and handed to that user (the
student's assignment folder).  The process also asks to be killed when its parent dies.

Hard limits equal soft limits, so the confined code cannot raise them again.  When ``nproc_base``
is given (no private user, no user namespace), the limit is ``nproc_base + nproc`` because the
kernel counts every process of the user.
"""
import json
import os
import resource
import shutil
import signal
import sys


def _prepare(limits: dict) -> None:
    """Steps that need the grader's identity: copy the inputs in and hand them to the sandbox user."""
    uid, gid = limits.get("uid"), limits.get("gid")
    if limits.get("copy_dir"):
        src, dst = limits["copy_dir"]
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True)
        if uid is not None and os.getuid() == 0:
            os.lchown(dst, int(uid), int(gid))
            for entry in os.listdir(src):   # only what was copied: dst may also hold read-only mounts
                for root, dirs, files in os.walk(os.path.join(dst, entry)):
                    for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                        os.lchown(name, int(uid), int(gid))


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent (the grader's kernel manager) dies."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def confine(limits: dict) -> None:
    _prepare(limits)
    if limits.get("uid") is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(int(limits["gid"]))
        os.setuid(int(limits["uid"]))
    _die_with_parent()  # after setuid, which clears it
    mb = 1024 * 1024
    settings = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, int(limits["cpu_s"]), int(limits["cpu_s"]) + 2),
        (resource.RLIMIT_AS, int(limits["memory_mb"]) * mb, int(limits["memory_mb"]) * mb),
        (resource.RLIMIT_FSIZE, int(limits["file_mb"]) * mb, int(limits["file_mb"]) * mb),
        (resource.RLIMIT_NOFILE, int(limits["nofile"]), int(limits["nofile"])),
    ]
    if limits.get("nproc") is not None:
        n = int(limits["nproc"]) + int(limits.get("nproc_base") or 0)
        settings.append((resource.RLIMIT_NPROC, n, n))
    for which, soft, hard in settings:
        resource.setrlimit(which, (soft, hard))


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: confine.py LIMITS_JSON -- PROGRAM [ARGS...]")
    confine(json.loads(argv[0]))
    os.execv(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
