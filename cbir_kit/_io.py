"""Ground floor: the one way cbir_kit writes a file - whole, or not at all.

Every writer (JSON results, reports and plots, cache manifests and chunks, checkpoints, grades,
leaderboards) goes through :func:`atomic_path`:

1. a temporary file is made in the target's own folder (same file system, so step 4 is atomic);
2. the caller writes it (directly, or by handing its name to ``savefig`` / ``torch.save``);
3. with ``fsync=True`` (files whose loss loses work: feature cache, checkpoints) it is flushed to disk;
4. it gets the mode a plain ``open()`` would give under the user's umask (``0o666 & ~umask``), and is
   renamed onto the target;
5. on any exception - Ctrl-C included - the temporary file is removed and the exception goes on, so a
   reader sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    """The process's umask, read without changing it (Linux); else by setting and restoring it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, it becomes ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (module docstring); return the path."""
    with atomic_path(path, fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return write_bytes(path, text.encode("utf-8"), fsync)


def write_json(path: str | os.PathLike, data, fsync: bool = False) -> Path:
    """Write ``data`` as indented JSON (NumPy numbers as floats) to ``path`` atomically; return the path."""
    return write_text(path, json.dumps(data, indent=2, default=float) + "\n", fsync)
