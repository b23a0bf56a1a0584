"""cbir_kit._io: every file cbir_kit writes appears whole or not at all, with the mode open() would give."""
from __future__ import annotations

import os
import stat

import pytest

from cbir_kit._io import atomic_path, write_json, write_text


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_mode_is_what_a_plain_open_gives(tmp_path, umask, mask, mode):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_text(tmp_path / "sub" / "atomic.txt", "x")   # the folder is made too
    assert stat.S_IMODE(written.stat().st_mode) == mode == stat.S_IMODE(plain.stat().st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_json(tmp_path / "result.json", {"mAP": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_path(target, fsync=True) as tmp:
            tmp.write_text('{"mAP": 0.')             # half written, then the writer fails
            raise RuntimeError("disk full")
    assert target.read_text() == '{\n  "mAP": 0.5\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_interrupting_the_write_removes_the_temporary(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "cache.npy") as tmp:
            tmp.write_bytes(b"\0" * 10)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
