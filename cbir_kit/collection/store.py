"""Collections: the on-disk format, written whole or not at all and verified when read (notebook 02).

A collection folder holds generations of the collection and one manifest naming the current one::

    DIR/manifest.json      format, toolkit version, model, index, item count, history,
                           "generation": "g000003", and per file its byte size and blake2b
    DIR/g000003/           vectors.npy   (N, D) float32, L2-normalised features
                           paths.txt     one image path per line (UTF-8), and paths.offsets.npy,
                                         the (N + 1) byte offsets of the lines, read lazily
                           labels.npy    (N,) int32 codes into the manifest's label_names (-1: none)
                           fingerprints.txt  the content hash of each image (feature reuse, duplicates)
                           index files   (:mod:`cbir_kit.index.persist`)

Every change (build, add) writes a complete new generation into a temporary folder, flushes it,
renames it into place and only then replaces ``manifest.json`` (an atomic rename).  A reader reads
the manifest once and opens that generation's files, so a search running during ``index add``
sees the old collection or the new one, never half of one.  The generation before the current
one is kept for readers that are still opening it; older ones are removed.  Writers take turns
through ``DIR/.lock`` (an OS file lock, released if a writer dies).  A run killed mid-write leaves
a ``.tmp-*`` folder that the next writer removes; the manifest still names a whole generation.

Reading verifies every file against the manifest: its size always, its blake2b checksum unless
the collection is memory-mapped (checksumming would read every page, which is what mapping
avoids).  A mismatch is refused with an error naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from .._io import write_json
from ..errors import CollectionError

FORMAT = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
GENERATION_PREFIX = "g"
TMP_PREFIX = ".tmp-"


def checksum(path: Path) -> str:
    """blake2b (16 bytes) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The manifest of the collection in ``folder``; a clear error when there is none or it is unreadable."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise CollectionError(f"collection folder {folder} does not exist; build one with "
                              f"`cbir index build --dataset SPEC --out {folder}`")
    if not path.is_file():
        raise CollectionError(f"{folder} is not a cbir collection (no {MANIFEST}); build one with "
                              f"`cbir index build --dataset SPEC --out {folder}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CollectionError(f"{path} cannot be read ({err}); rebuild the collection with `cbir index build`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CollectionError(f"{path}: unknown collection format {manifest.get('format') if isinstance(manifest, dict) else None!r} "
                              f"(this cbir_kit reads format {FORMAT}); rebuild the collection with `cbir index build`")
    return manifest


def verify(folder: Path, manifest: dict, checksums: bool = True) -> Path:
    """The current generation's folder, after checking each file's size (and checksum) against the manifest."""
    generation = Path(folder) / manifest["generation"]
    for name, record in manifest["files"].items():
        path = generation / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CollectionError(f"{path} is missing from the collection; rebuild it with `cbir index build`") from None
        if size != record["bytes"]:
            raise CollectionError(f"{path} has {size} bytes but the collection's manifest says {record['bytes']}: the "
                                  "file was changed or truncated; rebuild the collection with `cbir index build`")
        if checksums and checksum(path) != record["blake2b"]:
            raise CollectionError(f"{path} does not match its checksum in the collection's manifest: the file was "
                                  "changed or corrupted; rebuild the collection with `cbir index build`")
    return generation


def write_lock(folder: Path) -> FileLock:
    """The lock writers of ``folder`` take turns through (``with write_lock(folder): ...``)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return FileLock(str(Path(folder) / LOCK))


def _next_generation(folder: Path, manifest: dict | None) -> str:
    """One past the highest generation in the manifest or on disk (a run killed between renaming its
    generation into place and writing the manifest leaves one that no manifest names)."""
    names = [p.name for p in folder.glob(GENERATION_PREFIX + "[0-9]*")] + ([manifest["generation"]] if manifest else [])
    numbers = [int(n[len(GENERATION_PREFIX):]) for n in names if n[len(GENERATION_PREFIX):].isdigit()]
    return f"{GENERATION_PREFIX}{max(numbers, default=0) + 1:06d}"


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(folder: Path, write_files, manifest: dict, previous: dict | None) -> dict:
    """Write a new generation with ``write_files(tmp_folder) -> None`` and make it current.

    Call with :func:`write_lock` held.  ``manifest`` gets ``generation`` and ``files`` (size and
    checksum of everything ``write_files`` wrote) and is returned as written.
    """
    folder = Path(folder)
    for leftover in folder.glob(TMP_PREFIX + "*"):             # a writer killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder))
    try:
        write_files(tmp)
        manifest = {**manifest, "format": FORMAT, "generation": _next_generation(folder, previous),
                    "files": {p.name: {"bytes": p.stat().st_size, "blake2b": checksum(p)}
                              for p in sorted(tmp.iterdir())}}
        _fsync_tree(tmp)
        tmp.rename(folder / manifest["generation"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(folder / MANIFEST, manifest, fsync=True)
    keep = {manifest["generation"], previous["generation"] if previous else None}
    for old in folder.glob(GENERATION_PREFIX + "[0-9]*"):
        if old.name not in keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return manifest
