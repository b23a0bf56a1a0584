"""On-disk feature cache: streaming, resumable, verified, safe for concurrent processes.

key = blake2b(format, model spec, weights, preprocessing, precision, content hash of every
image in order).  A complete entry is two files in the cache folder:

``KEY.npy``   the (N, D) float32 vectors (NaN rows for images that failed to load),
``KEY.json``  ``n``, ``dim``, ``n_bytes`` (size of ``KEY.npy``), ``checksum`` (blake2b of the
              vectors' bytes, row-major), ``failures`` and the identity.

While features are being extracted they are committed in chunks of ``chunk_size`` images to
``KEY.partial/``: ``chunk-000000.npy`` ... plus ``manifest.json``, which lists every finished
chunk with its rows, byte size and checksum.  Each chunk file and the manifest are written
to a temporary name, flushed to disk and renamed into place, so whatever moment a run is
killed (even SIGKILL) the manifest only names complete chunks.  The next run verifies those
chunks, extracts only the missing ones, then assembles ``KEY.npy`` chunk by chunk (never all
images in memory), publishes ``KEY.json`` last and removes ``KEY.partial/``.  Batches never
cross a chunk boundary, so a resumed run feeds the model exactly the batches an
uninterrupted run does and its features are bit-identical.

Every entry or chunk is checked before use (byte size, shape, dtype, checksum); one that
fails is discarded with a warning and recomputed, never loaded.

Two processes asking for the same key take turns through a file lock (``KEY.lock``, an
``flock`` the OS releases when a process dies): the second waits, then finds the finished
entry.  Loaded vectors are memory-mapped copy-on-write: writing to them never touches the
cache file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from .._io import atomic_path
from ..errors import CbirError
from ..images import ImageRef, fingerprint
from .extractor import Extractor, Features

CACHE_FORMAT = 2
DEFAULT_CHUNK_SIZE = 1024


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$CBIR_CACHE``, else ``$XDG_CACHE_HOME/cbir_kit`` (``~/.cache``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("CBIR_CACHE"):
        return Path(os.environ["CBIR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cbir_kit"


def default_chunk_size(chunk_size: int | None = None) -> int:
    """``chunk_size`` if given, else ``$CBIR_CHUNK_SIZE``, else 1024 images per committed chunk."""
    raw = chunk_size if chunk_size is not None else os.environ.get("CBIR_CHUNK_SIZE", DEFAULT_CHUNK_SIZE)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise CbirError(f"the feature cache chunk size must be a positive integer; got {raw!r} "
                        "(check $CBIR_CHUNK_SIZE)")
    return value


def cache_key(identity: dict, images: Sequence[ImageRef]) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps({"format": CACHE_FORMAT, **identity}, sort_keys=True).encode())
    for ref in images:
        h.update(fingerprint(ref).encode())
    return h.hexdigest()


def _checksum(arrays: Iterable[np.ndarray]) -> str:
    """blake2b-128 of the arrays' bytes (row-major), one after the other."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        for start in range(0, max(len(a), 1), 4096):  # bounded copies for memory-mapped input
            h.update(np.ascontiguousarray(a[start:start + 4096]).tobytes())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, write) -> None:
    """Call ``write(file)`` on a file that becomes ``path`` once complete and on disk (:mod:`cbir_kit._io`)."""
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        write(f)


def _write_json(path: Path, data: dict) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(data).encode()))


def _load_verified(path: Path, rows: int, dim: int | None, n_bytes: int, checksum: str) -> np.ndarray:
    """Memory-map ``path`` (copy-on-write) after checking size, shape, dtype and checksum."""
    size = path.stat().st_size
    if size != n_bytes:
        raise ValueError(f"{size} bytes on disk, {n_bytes} expected")
    if rows == 0:
        vectors = np.load(path, allow_pickle=False)
    else:
        vectors = np.asarray(np.load(path, mmap_mode="c", allow_pickle=False))
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != rows or \
            (dim is not None and vectors.shape[1] != dim):
        raise ValueError(f"holds {vectors.dtype} {vectors.shape}, float32 ({rows}, {dim}) expected")
    if _checksum([vectors]) != checksum:
        raise ValueError("checksum does not match")
    return vectors


def _ok_mask(n: int, failures: Sequence[Sequence]) -> np.ndarray:
    ok = np.ones(n, dtype=bool)
    ok[np.array([int(f[0]) for f in failures], dtype=np.intp)] = False
    return ok


class FeatureCache:
    """A folder of cached feature entries; ``get_or_extract`` is the one entry point.

    ``chunk_size`` images are committed at a time (default ``$CBIR_CHUNK_SIZE`` or 1024);
    a killed extraction loses at most one chunk of work.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, chunk_size: int | None = None):
        self.dir = default_cache_dir(cache_dir)
        self.chunk_size = default_chunk_size(chunk_size)

    def vectors_path(self, key: str) -> Path:
        return self.dir / f"{key}.npy"

    def meta_path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def partial_dir(self, key: str) -> Path:
        return self.dir / f"{key}.partial"

    @contextmanager
    def lock(self, key: str):
        """Hold ``KEY.lock`` (waits, with a note on stderr, while another process holds it)."""
        lock = FileLock(str(self.dir / f"{key}.lock"))
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=0)
        except Timeout:   # (an OSError too, so it comes first)
            print(f"cbir_kit: waiting for another process that is extracting the same features "
                  f"({self.dir / key}.*)", file=sys.stderr)
            lock.acquire()
        except OSError as err:   # read-only, someone else's, or not a folder at all
            raise CbirError(f"cannot write to the feature cache folder {self.dir} ({err.strerror or err}); "
                            "point cache_dir (cbir --cache) or $CBIR_CACHE at a folder you can write to") from None
        try:
            yield
        finally:
            lock.release()

    def _discard(self, key: str, what: Path, err: Exception) -> None:
        warnings.warn(f"feature cache entry {what} is corrupt ({err}); discarding it and recomputing",
                      stacklevel=3)
        self.meta_path(key).unlink(missing_ok=True)
        self.vectors_path(key).unlink(missing_ok=True)

    def load(self, key: str, n: int) -> Features | None:
        """The cached features for ``key``, or None when absent or failing verification.

        Call it holding :meth:`lock` when other processes may be writing the same key.
        """
        meta_path, vec_path = self.meta_path(key), self.vectors_path(key)
        if not meta_path.exists():
            vec_path.unlink(missing_ok=True)  # a run killed between the two renames of a publish
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != CACHE_FORMAT or meta["n"] != n:
                raise ValueError(f"format {meta.get('format')} with {meta['n']} rows, "
                                 f"format {CACHE_FORMAT} with {n} rows expected")
            vectors = _load_verified(vec_path, n, meta["dim"], meta["n_bytes"], meta["checksum"])
            failures = [(int(i), str(img), str(reason)) for i, img, reason in meta["failures"]]
            return Features(vectors, _ok_mask(n, failures), failures)
        except Exception as err:  # any unreadable entry is treated the same way
            self._discard(key, vec_path, err)
            return None

    def _publish(self, key: str, chunks: Sequence[Path], n: int, dim: int, failures: list,
                 identity: dict) -> Features:
        """Assemble the chunk files into ``KEY.npy`` (streaming), then publish ``KEY.json``."""
        vec_path = self.vectors_path(key)
        digest = hashlib.blake2b(digest_size=16)

        def write(f):
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (n, dim)}
            np.lib.format.write_array_header_1_0(f, header)
            for path in chunks:
                part = np.load(path, mmap_mode="r", allow_pickle=False)
                for start in range(0, len(part), 4096):
                    block = np.ascontiguousarray(part[start:start + 4096]).tobytes()
                    digest.update(block)
                    f.write(block)

        _write_atomic(vec_path, write)
        meta = {"format": CACHE_FORMAT, "n": n, "dim": dim, "n_bytes": vec_path.stat().st_size,
                "checksum": digest.hexdigest(), "failures": [list(f) for f in failures], "identity": identity}
        _write_json(self.meta_path(key), meta)
        _fsync_dir(self.dir)
        shutil.rmtree(self.partial_dir(key), ignore_errors=True)
        vectors = np.load(vec_path, allow_pickle=False) if n == 0 else \
            np.asarray(np.load(vec_path, mmap_mode="c", allow_pickle=False))
        return Features(vectors, _ok_mask(n, failures), [tuple(f) for f in failures])

    def save(self, key: str, feats: Features, identity: dict) -> Path:
        """Store in-memory ``feats`` as a complete entry (one chunk), atomically."""
        with self.lock(key):
            part = self.partial_dir(key)
            part.mkdir(parents=True, exist_ok=True)
            chunk = part / "chunk-000000.npy"
            vectors = np.ascontiguousarray(feats.vectors, dtype=np.float32)
            _write_atomic(chunk, lambda f: np.save(f, vectors))
            self._publish(key, [chunk], len(vectors), vectors.shape[1], list(feats.failures), identity)
        return self.vectors_path(key)

    def _resume_manifest(self, key: str, n: int, identity: dict) -> dict:
        """The partial entry's manifest with only chunks that verify; stray files removed."""
        part = self.partial_dir(key)
        fresh = {"format": CACHE_FORMAT, "n": n, "chunk_size": self.chunk_size, "identity": identity,
                 "dim": None, "chunks": {}}
        try:
            manifest = json.loads((part / "manifest.json").read_text())
            if manifest.get("format") != CACHE_FORMAT or manifest.get("n") != n or \
                    manifest.get("identity") != identity or int(manifest.get("chunk_size", 0)) < 1:
                raise ValueError("it belongs to another format, size or model")
        except FileNotFoundError:
            manifest = fresh
        except Exception as err:
            warnings.warn(f"feature cache manifest {part / 'manifest.json'} is unreadable ({err}); "
                          "starting this extraction again", stacklevel=3)
            manifest = fresh
        kept = {}
        for index, chunk in manifest["chunks"].items():
            path = part / chunk["file"]
            try:
                _load_verified(path, chunk["rows"], manifest["dim"], chunk["n_bytes"], chunk["checksum"])
                kept[index] = chunk
            except Exception as err:
                warnings.warn(f"feature cache chunk {path} is corrupt ({err}); discarding it and recomputing",
                              stacklevel=3)
        manifest["chunks"] = kept
        if part.is_dir():
            listed = {c["file"] for c in kept.values()} | {"manifest.json"}
            for stray in part.iterdir():  # chunks written after the last manifest, temporary files
                if stray.name not in listed:
                    stray.unlink(missing_ok=True)
        for stray in self.dir.glob(f".{key}.*.tmp"):  # a publish killed before its rename
            stray.unlink(missing_ok=True)
        return manifest

    def get_or_extract(self, extractor: Extractor, images: Sequence[ImageRef], progress: bool = True,
                       desc: str = "extract") -> tuple[Features, bool]:
        """Cached features for ``images`` if present and valid, else extract (resuming) and store them.

        Returns ``(features, hit)`` where ``hit`` says whether they came from the cache
        without extracting anything.
        """
        identity = extractor.cache_identity()
        key = cache_key(identity, images)
        n = len(images)
        with self.lock(key):
            cached = self.load(key, n)
            if cached is not None:
                return cached, True
            return self._extract(key, extractor, images, identity, progress, desc), False

    def _extract(self, key: str, extractor: Extractor, images: Sequence[ImageRef], identity: dict,
                 progress: bool, desc: str) -> Features:
        part = self.partial_dir(key)
        manifest = self._resume_manifest(key, len(images), identity)
        n, size = len(images), int(manifest["chunk_size"])
        bounds = [(c * size, min(n, (c + 1) * size)) for c in range(math.ceil(n / size))]
        missing = [c for c in range(len(bounds)) if str(c) not in manifest["chunks"]]
        if missing:
            part.mkdir(parents=True, exist_ok=True)
            manifest["dim"] = extractor.dim
            ranges = [r for c in missing for r in extractor.batch_ranges(*bounds[c])]
            done = n - sum(bounds[c][1] - bounds[c][0] for c in missing)
            pending: list = []
            with tqdm(total=n, initial=done, desc=f"{desc} [{extractor.spec}]", unit="img",
                      disable=not progress, leave=False) as bar:
                for batch in extractor.stream(images, ranges, bar):
                    pending.append(batch)
                    c = batch.start // size
                    if batch.stop == bounds[c][1]:
                        self._commit_chunk(part, manifest, c, pending)
                        pending = []
        dim = manifest["dim"] if manifest["dim"] is not None else extractor.dim
        chunks = [part / manifest["chunks"][str(c)]["file"] for c in range(len(bounds))]
        failures = [tuple(f) for c in range(len(bounds)) for f in manifest["chunks"][str(c)]["failures"]]
        return self._publish(key, chunks, n, dim, failures, identity)

    def _commit_chunk(self, part: Path, manifest: dict, c: int, batches: list) -> None:
        """Write one chunk file, then record it in the manifest (both atomically, in that order)."""
        vectors = np.concatenate([b.vectors for b in batches])
        name = f"chunk-{c:06d}.npy"
        _write_atomic(part / name, lambda f: np.save(f, vectors))
        manifest["chunks"][str(c)] = {
            "file": name, "rows": len(vectors), "n_bytes": (part / name).stat().st_size,
            "checksum": _checksum([vectors]), "failures": [list(f) for b in batches for f in b.failures]}
        _write_json(part / "manifest.json", manifest)
