"""Stage 2, features: the on-disk feature cache, streaming, resumable, verified, safe for concurrent processes (notebook 01).

key = blake2b(format, model spec, weights, preprocessing, precision, content hash of every
image in order).  A complete entry is two files in the cache folder:

``KEY.npy``   the (N, D) float32 vectors (NaN rows for images that failed to load),
``KEY.json``  ``n``, ``dim``, ``n_bytes`` (size of ``KEY.npy``), ``checksum`` (blake2b of the
              vectors' bytes, row-major), ``failures``, the identity and ``fingerprints`` (the
              content hash of each row's image).

Features are reused image by image: on a miss, every complete entry of the same identity is
searched for the requested images' content hashes, so the same images in another order, under
other labels or inside a larger set are not embedded again (only the images no entry holds
are, as an entry of their own); an image whose bytes changed has another hash and is embedded
anew.

While features are being extracted they are committed in chunks to ``KEY.partial/``:
``chunk-000000000.npy`` ... (named by their first image) plus ``manifest.json``, which lists
every finished chunk with its rows ``[start, stop)``, byte size and checksum.  A chunk is
closed once it holds about ``chunk_seconds`` (5 s) of work at the extraction rate measured so
far, and at least :data:`MIN_CHUNK_ROWS` and at most :data:`MAX_CHUNK_ROWS` images, so an
interrupted run loses a few seconds of work whatever the model, device or gallery size
(``chunk_size`` or ``$CBIR_CHUNK_SIZE`` fixes the number of images instead).  Each chunk file
and the manifest are written to a temporary name, flushed to disk and renamed into place, so
whatever moment a run is killed (even SIGKILL) the manifest only names complete chunks.  The
next run verifies those chunks, extracts only the images no chunk holds, then assembles
``KEY.npy`` chunk by chunk (never all images in memory), publishes ``KEY.json`` last and
removes ``KEY.partial/``.  Chunks are closed only at batch boundaries and batches are cut from
the start of each missing range, so a resumed run feeds the model exactly the batches an
uninterrupted run does and its features are bit-identical.  A run stopped before it committed
any chunk (Ctrl-C while the model downloads, say) leaves no ``KEY.partial/`` behind.

Every entry or chunk is checked before use (byte size, shape, dtype, checksum); one that
fails is discarded with a warning and recomputed, never loaded.

Two processes asking for the same key take turns through a lock file (``KEY.lock``, an
``flock`` the OS releases when a process dies): the second waits, then finds the finished
entry.  The holder removes ``KEY.lock`` before releasing it, so a finished or interrupted run
leaves none behind.  Loaded vectors are memory-mapped copy-on-write: writing to them never
touches the cache file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from .._io import atomic_path
from ..errors import CbirError
from ..datasets.images import ImageRef, fingerprint
from .extractor import Extractor, Features

try:
    import fcntl
except ImportError:  # Windows (see _filelock)
    fcntl = None

CACHE_FORMAT = 2
MANIFEST_LAYOUT = "ranges"  # chunks listed by their rows [start, stop)
CHUNK_SECONDS = 5.0
MIN_CHUNK_ROWS = 16
MAX_CHUNK_ROWS = 8192


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$CBIR_CACHE``, else ``$XDG_CACHE_HOME/cbir_kit`` (``~/.cache``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("CBIR_CACHE"):
        return Path(os.environ["CBIR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cbir_kit"


def default_chunk_size(chunk_size: int | None = None) -> int | None:
    """``chunk_size`` if given, else ``$CBIR_CHUNK_SIZE``, else None (chunks sized by time)."""
    raw = chunk_size if chunk_size is not None else os.environ.get("CBIR_CHUNK_SIZE")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise CbirError(f"the feature cache chunk size must be a positive integer; got {raw!r} "
                        "(check $CBIR_CHUNK_SIZE)")
    return value


@dataclass(frozen=True)
class ChunkPolicy:
    """When the chunk being filled is committed to disk.

    It is full once it holds ``max_rows`` images, or ``min_rows`` images or more that took
    ``seconds`` of work or more at the rate measured so far.
    """

    seconds: float = CHUNK_SECONDS
    min_rows: int = MIN_CHUNK_ROWS
    max_rows: int = MAX_CHUNK_ROWS

    @classmethod
    def fixed(cls, rows: int) -> "ChunkPolicy":
        """Chunks of ``rows`` images (rounded up to whole batches), whatever the time."""
        return cls(seconds=0.0, min_rows=rows, max_rows=rows)

    def full(self, rows: int, seconds_per_image: float) -> bool:
        """Whether a chunk of ``rows`` images, made at ``seconds_per_image``, is to be committed now."""
        return rows >= self.max_rows or (rows >= self.min_rows and rows * seconds_per_image >= self.seconds)


def _exclusive(path: Path, on_wait: Callable[[], None]):
    """Hold an exclusive lock on the file ``path`` for a ``with`` block, removing the file after.

    ``on_wait()`` is called before waiting for another holder.
    """
    return _flock(path, on_wait) if fcntl is not None else _filelock(path, on_wait)


@contextmanager
def _flock(path: Path, on_wait: Callable[[], None]):
    """:func:`_exclusive` with POSIX ``flock``: the holder removes ``path`` before it lets go.

    A process that was waiting then finds that ``path`` no longer names the file it locked,
    and starts again on the new file.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:  # removed by the holder we waited for
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def _filelock(path: Path, on_wait: Callable[[], None]):
    """:func:`_exclusive` where there is no ``flock`` (Windows): filelock removes its file on release there."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def cache_key(identity: dict, fingerprints: Sequence[str]) -> str:
    """The entry key of images with content hashes ``fingerprints`` (in order) under ``identity``."""
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps({"format": CACHE_FORMAT, **identity}, sort_keys=True).encode())
    for fp in fingerprints:
        h.update(fp.encode())
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

    Extraction commits a chunk about every ``chunk_seconds`` of work (:class:`ChunkPolicy`), so
    a killed extraction loses at most that much; ``chunk_size`` (default ``$CBIR_CHUNK_SIZE``)
    commits a fixed number of images at a time instead.  ``remote`` extracts the missing rows
    elsewhere instead of in this process, with the signature of :meth:`_extract_ranges`
    (:class:`cbir_kit.features.distributed.ClusterExtraction`: one task per chunk on a Dask cluster).
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, chunk_size: int | None = None,
                 chunk_seconds: float = CHUNK_SECONDS, remote: Callable | None = None):
        self.dir = default_cache_dir(cache_dir)
        self.remote = remote
        self.chunk_size = default_chunk_size(chunk_size)
        if chunk_seconds <= 0:
            raise CbirError(f"chunk_seconds must be positive; got {chunk_seconds}")
        self.policy = ChunkPolicy(seconds=chunk_seconds) if self.chunk_size is None \
            else ChunkPolicy.fixed(self.chunk_size)

    def vectors_path(self, key: str) -> Path:
        return self.dir / f"{key}.npy"

    def meta_path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def partial_dir(self, key: str) -> Path:
        return self.dir / f"{key}.partial"

    @contextmanager
    def lock(self, key: str):
        """Hold ``KEY.lock`` (waits, with a note on stderr, while another process holds it)."""
        def waiting():
            print(f"cbir_kit: waiting for another process that is extracting the same features "
                  f"({self.dir / key}.*)", file=sys.stderr)

        with ExitStack() as held:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(_exclusive(self.dir / f"{key}.lock", waiting))
            except OSError as err:   # read-only, someone else's, or not a folder at all
                raise CbirError(f"cannot write to the feature cache folder {self.dir} ({err.strerror or err}); "
                                "point cache_dir= (in a command: `cbir evaluate --cache DIR`) or $CBIR_CACHE at a "
                                "folder you can write to") from None
            yield

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
                 identity: dict, fingerprints: Sequence[str] | None = None) -> Features:
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
                "checksum": digest.hexdigest(), "failures": [list(f) for f in failures], "identity": identity,
                "fingerprints": list(fingerprints) if fingerprints is not None else None}
        _write_json(self.meta_path(key), meta)
        _fsync_dir(self.dir)
        shutil.rmtree(self.partial_dir(key), ignore_errors=True)
        vectors = np.load(vec_path, allow_pickle=False) if n == 0 else \
            np.asarray(np.load(vec_path, mmap_mode="c", allow_pickle=False))
        return Features(vectors, _ok_mask(n, failures), [tuple(f) for f in failures])

    def save(self, key: str, feats: Features, identity: dict, fingerprints: Sequence[str] | None = None) -> Path:
        """Store in-memory ``feats`` as a complete entry (one chunk), atomically."""
        with self.lock(key):
            return self.save_unlocked(key, feats, identity, fingerprints)

    def save_unlocked(self, key: str, feats: Features, identity: dict,
                      fingerprints: Sequence[str] | None = None) -> Path:
        """:meth:`save` for a caller that already holds ``key``'s lock."""
        part = self.partial_dir(key)
        part.mkdir(parents=True, exist_ok=True)
        chunk = part / _chunk_name(0)
        vectors = np.ascontiguousarray(feats.vectors, dtype=np.float32)
        _write_atomic(chunk, lambda f: np.save(f, vectors))
        self._publish(key, [chunk], len(vectors), vectors.shape[1], list(feats.failures), identity, fingerprints)
        return self.vectors_path(key)

    def _resume_manifest(self, key: str, n: int, identity: dict) -> dict:
        """The partial entry's manifest with only chunks that verify; stray files removed."""
        part = self.partial_dir(key)
        fresh = {"format": CACHE_FORMAT, "layout": MANIFEST_LAYOUT, "n": n, "identity": identity,
                 "dim": None, "chunks": []}
        try:
            manifest = json.loads((part / "manifest.json").read_text())
            if manifest.get("format") != CACHE_FORMAT or manifest.get("layout") != MANIFEST_LAYOUT or \
                    manifest.get("n") != n or manifest.get("identity") != identity:
                raise ValueError("it belongs to another format, size or model")
            manifest["chunks"] = sorted(manifest["chunks"], key=lambda c: int(c["start"]))
        except FileNotFoundError:
            manifest = fresh
        except Exception as err:
            warnings.warn(f"feature cache manifest {part / 'manifest.json'} is unreadable ({err}); "
                          "starting this extraction again", stacklevel=3)
            manifest = fresh
        kept: list[dict] = []
        for chunk in manifest["chunks"]:
            path = part / str(chunk.get("file"))
            try:
                if not (kept[-1]["stop"] if kept else 0) <= chunk["start"] < chunk["stop"] <= n or \
                        chunk["stop"] - chunk["start"] != chunk["rows"]:
                    raise ValueError(f"rows {chunk['start']}-{chunk['stop']} overlap another chunk or the end")
                _load_verified(path, chunk["rows"], manifest["dim"], chunk["n_bytes"], chunk["checksum"])
                kept.append(chunk)
            except Exception as err:
                warnings.warn(f"feature cache chunk {path} is corrupt ({err}); discarding it and recomputing",
                              stacklevel=3)
        manifest["chunks"] = kept
        if part.is_dir():
            listed = {c["file"] for c in kept} | {"manifest.json"}
            for stray in part.iterdir():  # chunks written after the last manifest, temporary files
                if stray.name not in listed:
                    stray.unlink(missing_ok=True)
        for stray in self.dir.glob(f".{key}.*.tmp"):  # a publish killed before its rename
            stray.unlink(missing_ok=True)
        return manifest

    def dataset_features(self, extractor: Extractor, ds, progress: bool = True,
                         label: str = "") -> tuple[Features, Features, bool]:
        """``(query_features, gallery_features, hit)`` of a dataset through the cache.

        For a leave-one-out dataset (the queries are the gallery) both are the same object and
        the images are embedded once; ``hit`` says whether nothing had to be extracted.
        """
        gallery, g_hit = self.get_or_extract(extractor, ds.gallery, progress, desc=f"gallery{label}")
        if ds.leave_one_out:
            return gallery, gallery, g_hit
        query, q_hit = self.get_or_extract(extractor, ds.query, progress, desc=f"queries{label}")
        return query, gallery, g_hit and q_hit

    def get_or_extract(self, extractor: Extractor, images: Sequence[ImageRef], progress: bool = True,
                       desc: str = "extract") -> tuple[Features, bool]:
        """Cached features for ``images`` if present and valid, else extract (resuming) and store them.

        Returns ``(features, hit)`` where ``hit`` says whether they came from the cache
        without extracting anything; ``features.fingerprints`` are the images' content hashes.
        """
        identity = extractor.cache_identity()
        fingerprints = [fingerprint(ref) for ref in images]
        feats, hit = self._get_or_extract(extractor, images, identity, fingerprints, progress, desc)
        feats.fingerprints = fingerprints
        return feats, hit

    def _get_or_extract(self, extractor: Extractor, images: Sequence[ImageRef], identity: dict,
                        fingerprints: list[str], progress: bool, desc: str) -> tuple[Features, bool]:
        key = cache_key(identity, fingerprints)
        n = len(images)
        with self.lock(key):
            cached = self.load(key, n)
            if cached is not None:
                return cached, True
            found = self._found_elsewhere(identity, fingerprints)
            if not found:
                return self._extract(key, extractor, images, identity, progress, desc, fingerprints), False
            missing = [i for i in range(n) if i not in found]
            new = None
            if missing:
                new, _ = self.get_or_extract(extractor, [images[i] for i in missing], progress, desc)
            feats = _combine(n, found, missing, new)
            self.save_unlocked(key, feats, identity, fingerprints)
            return self.load(key, n), not missing

    def _found_elsewhere(self, identity: dict, fingerprints: Sequence[str]) -> dict[int, np.ndarray]:
        """Rows of ``fingerprints`` whose features another complete entry of the same identity holds.

        Entries are matched by each image's content hash, so the same image found in another order,
        under other labels or inside a larger set is never extracted again; an image whose bytes
        changed has another hash and is not found.  Rows that failed to load there are not reused.
        """
        wanted = {fp: i for i, fp in enumerate(fingerprints)}
        found: dict[int, np.ndarray] = {}
        for meta_path in sorted(self.dir.glob("*.json")):
            if len(found) == len(wanted):
                break
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("format") != CACHE_FORMAT or meta.get("identity") != identity or not meta.get("fingerprints"):
                continue
            rows = [(r, wanted[fp]) for r, fp in enumerate(meta["fingerprints"])
                    if fp in wanted and wanted[fp] not in found]
            failed = {int(f[0]) for f in meta["failures"]}
            rows = [(r, i) for r, i in rows if r not in failed]
            if not rows:
                continue
            other = self.load(meta_path.stem, meta["n"])
            if other is not None:
                found.update({i: np.array(other.vectors[r]) for r, i in rows})
        return found

    def _extract(self, key: str, extractor: Extractor, images: Sequence[ImageRef], identity: dict,
                 progress: bool, desc: str, fingerprints: Sequence[str] | None = None) -> Features:
        """Extract the images no verified chunk holds, committing chunks as they fill, then publish."""
        part = self.partial_dir(key)
        manifest = self._resume_manifest(key, len(images), identity)
        n = len(images)
        gaps = _missing_ranges(manifest["chunks"], n)
        try:
            if gaps:
                extract = self.remote or self._extract_ranges
                extract(part, manifest, extractor, images, gaps, progress, desc)
        except BaseException:
            if not manifest["chunks"]:  # nothing worth resuming (e.g. stopped while the model downloaded)
                shutil.rmtree(part, ignore_errors=True)
            raise
        dim = manifest["dim"] if manifest["dim"] is not None else extractor.dim
        chunks = manifest["chunks"]
        failures = [tuple(f) for c in chunks for f in c["failures"]]
        return self._publish(key, [part / c["file"] for c in chunks], n, dim, failures, identity, fingerprints)

    def _extract_ranges(self, part: Path, manifest: dict, extractor: Extractor, images: Sequence[ImageRef],
                        gaps: list[tuple[int, int]], progress: bool, desc: str) -> None:
        """Extract the rows of ``gaps`` batch by batch; commit a chunk whenever :attr:`policy` says it is full.

        A chunk also ends where a gap ends, so it always holds consecutive rows.
        """
        manifest["dim"] = extractor.dim
        ranges = [r for a, b in gaps for r in extractor.batch_ranges(a, b)]
        ends = {b for _, b in gaps}
        n = len(images)
        done = n_done = n - sum(b - a for a, b in gaps)
        pending: list = []
        started = time.perf_counter()
        with tqdm(total=n, initial=done, desc=f"{desc} [{extractor.spec}]", unit="img",
                  disable=not progress, leave=False) as bar:
            for batch in extractor.stream(images, ranges, bar):
                pending.append(batch)
                n_done += batch.stop - batch.start
                seconds_per_image = (time.perf_counter() - started) / (n_done - done)
                if batch.stop in ends or self.policy.full(batch.stop - pending[0].start, seconds_per_image):
                    self._commit_chunk(part, manifest, pending)
                    pending = []

    def _commit_chunk(self, part: Path, manifest: dict, batches: list) -> None:
        """Write one chunk file, then record it in the manifest (both atomically, in that order)."""
        record_chunk(part, manifest, write_chunk(part, batches))


def write_chunk(part: Path, batches: list) -> dict:
    """Write the consecutive ``batches`` as one chunk file in ``part`` (atomically); its manifest record."""
    vectors = np.concatenate([b.vectors for b in batches])
    start, stop = batches[0].start, batches[-1].stop
    name = _chunk_name(start)
    part.mkdir(parents=True, exist_ok=True)
    _write_atomic(part / name, lambda f: np.save(f, vectors))
    return {"start": start, "stop": stop, "file": name, "rows": len(vectors), "n_bytes": (part / name).stat().st_size,
            "checksum": _checksum([vectors]), "failures": [list(f) for b in batches for f in b.failures]}


def record_chunk(part: Path, manifest: dict, record: dict) -> None:
    """Add a written chunk's ``record`` to the entry's manifest and write the manifest (atomically)."""
    manifest["chunks"].append(record)
    manifest["chunks"].sort(key=lambda c: c["start"])
    _write_json(part / "manifest.json", manifest)


def _combine(n: int, found: dict[int, np.ndarray], missing: list[int], new: Features | None) -> Features:
    """Features of ``n`` images: rows ``found`` elsewhere in the cache, the ``missing`` rows from ``new``."""
    dim = len(next(iter(found.values())))
    vectors = np.full((n, dim), np.nan, dtype=np.float32)
    for i, row in found.items():
        vectors[i] = row
    failures = []
    if new is not None:
        vectors[missing] = new.vectors
        failures = [(missing[i], img, reason) for i, img, reason in new.failures]
    return Features(vectors, _ok_mask(n, failures), failures)


def _chunk_name(start: int) -> str:
    """The file of the chunk whose first row is ``start``."""
    return f"chunk-{start:09d}.npy"


def _missing_ranges(chunks: list[dict], n: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` row ranges of ``0..n`` that no chunk (sorted, non-overlapping) holds."""
    gaps, at = [], 0
    for chunk in chunks:
        if chunk["start"] > at:
            gaps.append((at, chunk["start"]))
        at = chunk["stop"]
    if at < n:
        gaps.append((at, n))
    return gaps
