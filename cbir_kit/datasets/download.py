"""Stage 1, datasets: safe downloads and safe archive extraction (notebook 00).

:func:`download` fetches one URL to one file:

* the bytes go to ``<dest>.part`` and are renamed to ``dest`` (``os.replace``) only when the
  transfer is complete and the checksum (MD5 or SHA-256, where one is published) matches;
* an interrupted transfer keeps its ``.part`` file and resumes with an HTTP ``Range`` request
  (``Range: bytes=N-``, answered ``206 Partial Content``); a server that ignores the range
  (answers ``200``) restarts the file from byte 0;
* a transfer that ends early (fewer bytes than ``Content-Length``) is detected and resumed, up
  to ``attempts`` times; a checksum mismatch discards the bytes and fetches them again once;
* an existing ``dest`` whose checksum does not match is treated as corrupt and re-fetched;
* when the network fails, :class:`DownloadError` names the URL, the reason and where to put
  the file by hand.

:func:`extract_archive` unpacks ``.tar``/``.tar.gz``/``.tgz``/``.zip`` into a temporary sibling
folder and moves the result into place; a member whose path would land outside the target
folder (absolute paths, ``..``, links) is refused with :class:`UnsafeArchiveError`.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from .base import DatasetError

CHUNK = 1 << 16
USER_AGENT = "cbir_kit-downloader"


class DownloadError(DatasetError):
    """A file could not be downloaded; the message names the URL and how to place it by hand."""


class ChecksumError(DownloadError):
    """A downloaded (or hand-placed) file does not match its published checksum."""


class UnsafeArchiveError(DatasetError):
    """An archive member would be written outside the extraction folder."""


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest (``md5`` or ``sha256``) of a file, read in blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expected(md5: str | None, sha256: str | None) -> tuple[str, str] | None:
    if sha256:
        return "sha256", sha256.lower()
    if md5:
        return "md5", md5.lower()
    return None


def verify(path: str | os.PathLike, md5: str | None = None, sha256: str | None = None) -> bool:
    """True when ``path`` matches the given checksum (or when no checksum is given)."""
    want = _expected(md5, sha256)
    return want is None or file_digest(path, want[0]) == want[1]


def manual_instructions(url: str, dest: Path, md5: str | None = None, sha256: str | None = None) -> str:
    """The sentence that tells a user how to place a file by hand."""
    want = _expected(md5, sha256)
    check = f" (its {want[0].upper()} must be {want[1]})" if want else ""
    return (f"To install it by hand, download {url} on a machine with internet access and save it as "
            f"{dest.resolve()}{check}, then run the command again.")


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _range_start(content_range: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes START-END/TOTAL`` header (None if absent or odd)."""
    unit, _, spec = (content_range or "").partition(" ")
    start = spec.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _transfer(url: str, part: Path, timeout: float, progress: bool, desc: str) -> None:
    """Append the rest of ``url`` to ``part`` (resuming at its size); raise ``_Short`` when cut off."""
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # range past the end: the .part file is already whole
            return
        raise
    with resp:
        if offset and (resp.status != 206 or _range_start(resp.headers.get("Content-Range")) != offset):
            offset = 0  # server ignored (or misread) the range: start over
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        mode = "ab" if offset else "wb"
        received = offset
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=desc, disable=not progress,
                                         leave=False) as bar:
            try:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as err:
                raise _Short(f"connection lost after {received} bytes ({err})") from None
    if total is not None and received < total:
        raise _Short(f"transfer ended after {received} of {total} bytes")


class _Short(Exception):
    """The transfer stopped early; the ``.part`` file holds what arrived."""


def download(url: str, dest: str | os.PathLike, *, md5: str | None = None, sha256: str | None = None,
             progress: bool = True, timeout: float = 60.0, attempts: int = 4, hint: str = "") -> Path:
    """Download ``url`` to ``dest`` safely (see the module docstring) and return ``dest``.

    ``hint`` is appended to the offline error (for example, where the dataset's page is).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    want = _expected(md5, sha256)
    if dest.exists():
        if verify(dest, md5, sha256):
            return dest
        dest.unlink()  # corrupt or truncated copy: fetch it again
    part = dest.with_name(dest.name + ".part")
    manual = manual_instructions(url, dest, md5, sha256) + (f" {hint}" if hint else "")
    mismatches = 0
    for attempt in range(attempts):
        try:
            _transfer(url, part, timeout, progress, dest.name)
        except _Short as err:
            last = str(err)
            continue
        except urllib.error.HTTPError as err:
            raise DownloadError(f"downloading {url} failed: HTTP {err.code} {err.reason}. {manual}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(f"cannot reach {url} ({reason}); are you offline? {manual}") from None
        if want is not None:
            got = file_digest(part, want[0])
            if got != want[1]:
                part.unlink()
                mismatches += 1
                last = f"{want[0].upper()} {got} does not match the published {want[1]}"
                if mismatches >= 2:
                    raise ChecksumError(f"{url}: {last} (downloaded twice). The file on the server differs "
                                        f"from the published one. {manual}")
                continue
        os.replace(part, dest)
        return dest
    raise DownloadError(f"downloading {url} failed after {attempts} attempts: {last}. The partial file "
                        f"{part} is kept and the next run resumes it. {manual}")


def _safe_target(root: Path, name: str, archive: Path) -> Path:
    """The path a member ``name`` extracts to, refusing anything that escapes ``root``."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the target folder; "
                                 "refusing to extract this archive")
    target = (root / pure).resolve()
    if target != root and root not in target.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside the target folder; refusing")
    return target


def _extract_tar(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            _safe_target(into, m.name, archive)
            if m.issym() or m.islnk():
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a link; refusing to extract links")
            if not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a special file; refusing")
        tar.extractall(into, members=members, filter="data")


def _extract_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_target(into, info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a link; refusing")
        for info in infos:
            zf.extract(info, into)  # CRC-checked while reading


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack ``archive`` so its top-level entries end up inside ``dest``; return ``dest``.

    Extraction happens in a temporary folder next to ``dest``; each top-level entry is then
    moved into ``dest`` (replacing an older copy of the same name).  A corrupt archive raises
    :class:`DatasetError` naming it, and leaves ``dest`` untouched.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest)).resolve()
    try:
        try:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, tmp)
            else:
                raise DatasetError(f"{archive} is neither a tar nor a zip archive; delete it and download it again")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise DatasetError(f"{archive} is corrupt or truncated ({err}); delete it and download it again") from None
        for entry in sorted(tmp.iterdir()):
            final = dest / entry.name
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            elif final.exists():
                final.unlink()
            os.replace(entry, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
