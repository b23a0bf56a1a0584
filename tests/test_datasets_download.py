"""Safe downloads against a local HTTP server, and safe archive extraction."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile

import pytest

from cbir_kit.datasets.download import (ChecksumError, DownloadError, UnsafeArchiveError, download,
                                        extract_archive, verify)
from cbir_kit.errors import CbirError

BODY = bytes(range(256)) * 400  # 102,400 bytes: several read chunks
MD5 = hashlib.md5(BODY).hexdigest()
SHA256 = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def server(http_server):
    http_server.files["/f.bin"] = BODY
    return http_server


def test_download_verifies_and_renames(server, tmp_path):
    dest = download(server.url("/f.bin"), tmp_path / "f.bin", md5=MD5, progress=False)
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "f.bin.part").exists()
    # a second call trusts the verified file and does not touch the network
    n = len(server.requests)
    download(server.url("/f.bin"), dest, md5=MD5, progress=False)
    assert len(server.requests) == n


def test_sha256_is_checked_too(server, tmp_path):
    download(server.url("/f.bin"), tmp_path / "f.bin", sha256=SHA256, progress=False)
    assert verify(tmp_path / "f.bin", sha256=SHA256)
    assert not verify(tmp_path / "f.bin", sha256="0" * 64)


def test_truncated_transfer_is_detected_and_resumed(server, tmp_path):
    server.truncate["/f.bin"] = 1  # first response stops halfway
    dest = download(server.url("/f.bin"), tmp_path / "f.bin", md5=MD5, progress=False)
    assert dest.read_bytes() == BODY
    assert server.requests[0] == ("/f.bin", None)
    assert server.requests[1] == ("/f.bin", f"bytes={len(BODY) // 2}-")  # resumed, not restarted


def test_part_file_from_an_earlier_run_is_resumed(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(BODY[:30000])
    dest = download(server.url("/f.bin"), tmp_path / "f.bin", md5=MD5, progress=False)
    assert dest.read_bytes() == BODY
    assert server.requests == [("/f.bin", "bytes=30000-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"garbage" * 100)
    dest = download(server.url("/f.bin"), tmp_path / "f.bin", md5=MD5, progress=False)
    assert dest.read_bytes() == BODY


def test_complete_part_file_answered_416_is_verified(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(BODY)
    dest = download(server.url("/f.bin"), tmp_path / "f.bin", md5=MD5, progress=False)
    assert dest.read_bytes() == BODY


def test_corrupt_part_file_is_discarded_and_refetched(server, tmp_path):
    # right length, wrong bytes: the server answers 416, the checksum fails, a fresh copy is fetched
    (tmp_path / "f.bin.part").write_bytes(b"\0" * len(BODY))
    dest = download(server.url("/f.bin"), tmp_path / "f.bin", md5=MD5, progress=False)
    assert dest.read_bytes() == BODY


def test_checksum_mismatch_raises_and_leaves_nothing(server, tmp_path):
    with pytest.raises(ChecksumError) as err:
        download(server.url("/f.bin"), tmp_path / "f.bin", md5="0" * 32, progress=False)
    msg = str(err.value)
    assert server.url("/f.bin") in msg and "0" * 32 in msg and MD5 in msg
    assert list(tmp_path.iterdir()) == []
    assert isinstance(err.value, CbirError)


def test_corrupt_existing_file_is_refetched(server, tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(BODY[:-1] + b"x")
    download(server.url("/f.bin"), dest, md5=MD5, progress=False)
    assert dest.read_bytes() == BODY


def test_always_truncating_server_gives_up_and_keeps_part(server, tmp_path):
    server.truncate["/f.bin"] = 100
    with pytest.raises(DownloadError) as err:
        download(server.url("/f.bin"), tmp_path / "f.bin", md5=MD5, progress=False, attempts=3)
    assert "resumes" in str(err.value)
    assert not (tmp_path / "f.bin").exists()
    part = tmp_path / "f.bin.part"
    assert 0 < part.stat().st_size < len(BODY)
    server.truncate["/f.bin"] = 0  # the next run resumes and completes
    download(server.url("/f.bin"), tmp_path / "f.bin", md5=MD5, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_http_404_names_url_and_manual_steps(server, tmp_path):
    with pytest.raises(DownloadError) as err:
        download(server.url("/missing.bin"), tmp_path / "m.bin", progress=False)
    msg = str(err.value)
    assert "404" in msg and server.url("/missing.bin") in msg
    assert str((tmp_path / "m.bin").resolve()) in msg


def test_offline_error_names_url_and_destination(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.tar.gz"
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "data.tar.gz", md5=MD5, progress=False, hint="See the dataset page.")
    msg = str(err.value)
    assert url in msg and "by hand" in msg and str((tmp_path / "data.tar.gz").resolve()) in msg
    assert MD5 in msg and "See the dataset page." in msg


# --- archives -------------------------------------------------------------------------------

def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_extract_tar_and_zip(tmp_path):
    _tar(tmp_path / "a.tgz", [("top/x.txt", b"x"), ("top/sub/y.txt", b"y")])
    out = extract_archive(tmp_path / "a.tgz", tmp_path / "out")
    assert (out / "top" / "sub" / "y.txt").read_bytes() == b"y"
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        zf.writestr("raw/z.txt", "z")
    extract_archive(tmp_path / "b.zip", tmp_path / "out")
    assert (tmp_path / "out" / "raw" / "z.txt").read_text() == "z"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["raw", "top"]  # no temp folder left


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_extract_refuses_escaping_tar_members(tmp_path, name):
    _tar(tmp_path / "bad.tgz", [("fine.txt", b"ok"), (name, b"evil")])
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract_archive(tmp_path / "bad.tgz", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "fine.txt").exists()  # nothing half-extracted


def test_extract_refuses_tar_symlink(tmp_path):
    with tarfile.open(tmp_path / "link.tar", "w") as tar:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="link"):
        extract_archive(tmp_path / "link.tar", tmp_path / "out")


def test_extract_refuses_escaping_zip_member(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("../evil.txt", "evil")
    with pytest.raises(UnsafeArchiveError):
        extract_archive(tmp_path / "bad.zip", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_extract_truncated_archive_is_an_error(tmp_path):
    _tar(tmp_path / "a.tgz", [("top/x.bin", bytes(range(256)) * 2000)])
    data = (tmp_path / "a.tgz").read_bytes()
    (tmp_path / "cut.tgz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CbirError, match="cut.tgz"):
        extract_archive(tmp_path / "cut.tgz", tmp_path / "out")
