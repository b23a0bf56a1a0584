"""On-disk feature cache, keyed by what determines the features.

key = blake2b(model spec, weights, preprocessing, content hash of every image in order).
Each entry is one ``.npz`` file holding the vectors, the ``ok`` mask, the failures and a
checksum of the vectors.  It is written to a temporary name and renamed into place, so a
killed run never leaves a half-written entry; an entry whose checksum, shape or format
does not verify is discarded with a warning and recomputed, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..images import ImageRef, fingerprint
from .extractor import Extractor, Features

CACHE_FORMAT = 1


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$CBIR_CACHE``, else ``$XDG_CACHE_HOME/cbir_kit`` (``~/.cache``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("CBIR_CACHE"):
        return Path(os.environ["CBIR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cbir_kit"


def cache_key(identity: dict, images: Sequence[ImageRef]) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps({"format": CACHE_FORMAT, **identity}, sort_keys=True).encode())
    for ref in images:
        h.update(fingerprint(ref).encode())
    return h.hexdigest()


def _checksum(vectors: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(vectors).tobytes(), digest_size=16).hexdigest()


class FeatureCache:
    """A folder of cached feature files; ``get_or_extract`` is the one entry point."""

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.dir = default_cache_dir(cache_dir)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def load(self, key: str, n: int) -> Features | None:
        """The cached features for ``key``, or None when absent or failing verification."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                vectors, ok = z["vectors"], z["ok"]
                meta = json.loads(str(z["meta"]))
            if vectors.shape[0] != n or ok.shape != (n,) or meta["checksum"] != _checksum(vectors):
                raise ValueError("shape or checksum does not match")
            failures = [tuple(f) for f in meta["failures"]]
            return Features(vectors, ok, failures)
        except Exception as err:  # any unreadable entry is treated the same way
            warnings.warn(f"feature cache entry {path} is corrupt ({err}); discarding it and recomputing",
                          stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def save(self, key: str, feats: Features, identity: dict) -> Path:
        """Write atomically: temporary file in the same folder, then ``os.replace``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = {"checksum": _checksum(feats.vectors), "failures": [list(f) for f in feats.failures],
                "identity": identity}
        fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, vectors=feats.vectors, ok=feats.ok, meta=np.array(json.dumps(meta)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.path(key)

    def get_or_extract(self, extractor: Extractor, images: Sequence[ImageRef], progress: bool = True,
                       desc: str = "extract") -> tuple[Features, bool]:
        """Cached features for ``images`` if present and valid, else extract and store them.

        Returns ``(features, hit)`` where ``hit`` says whether they came from the cache.
        """
        identity = extractor.cache_identity()
        key = cache_key(identity, images)
        cached = self.load(key, len(images))
        if cached is not None:
            return cached, True
        feats = extractor.extract(images, progress=progress, desc=desc)
        self.save(key, feats, identity)
        return feats, False
