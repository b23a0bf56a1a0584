"""Stage 3, index: one description of an index, and writing it to disk and reading it back (notebook 02).

An :class:`IndexSpec` is what ``cbir evaluate`` and ``cbir index build`` take as flags: a faiss
``index_factory`` string (``"Flat"``, ``"IVF64,Flat"``, ``"HNSW32"``, ``"IVF64,PQ16"``) with its
search knobs ``nprobe`` / ``ef_search``, or a hash code (``hash="itq:64"``) with its
``shortlist``.  ``spec.build(gallery)`` makes the index; :func:`write_index` and :func:`read_index`
save and load it.  On disk:

* a faiss index: ``index.faiss`` (``faiss.write_index``);
* a hash index: ``codes.faissb`` (the binary codes, ``faiss.write_index_binary``) and
  ``hasher.npz`` (``mean_`` and ``projection_``: code = packbits((x - mean) P > 0)); its float
  re-rank reads the collection's feature matrix, which is passed in, never stored twice.

``read_index(..., mmap=True)`` memory-maps what faiss can map (``IO_FLAG_MMAP_IFC``: the codes of
Flat and PQ indexes, the inverted lists of IVF): opening a 1M-vector Flat index then takes
milliseconds and pages are read as searches touch them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import CbirError
from ..method_specs import parse_method
from .ann import AnnIndex
from .hashing import HASHERS, HashIndex, make_hasher
from .sharded import build_sharded, can_shard

FAISS_FILE, CODES_FILE, HASHER_FILE = "index.faiss", "codes.faissb", "hasher.npz"


@dataclass(frozen=True)
class IndexSpec:
    """Which index to build: ``factory`` (faiss) or ``hash`` (``METHOD:BITS``), and the search knobs."""

    factory: str = "Flat"
    nprobe: int | None = None
    ef_search: int | None = None
    hash: str | None = None
    shortlist: int | None = None

    def __post_init__(self):
        if self.hash is not None:
            parse_method("hash", self.hash)
            if self.factory != "Flat":
                raise CbirError("hash= builds its own index (hash shortlist + float re-rank); leave index= at 'Flat'")
        elif self.shortlist is not None:
            raise CbirError("shortlist= needs hash= (e.g. hash='itq:64', shortlist=200)")

    def describe(self) -> str:
        """``"hash:itq:64 (shortlist 200)"`` or the factory string with its knobs."""
        if self.hash:
            return f"hash:{self.hash}" + (f" (shortlist {self.shortlist})" if self.shortlist else " (shortlist 2k)")
        knobs = [f"{name}={value}" for name, value in (("nprobe", self.nprobe), ("efSearch", self.ef_search))
                 if value is not None]
        return self.factory + (f" ({', '.join(knobs)})" if knobs else "")

    def to_dict(self) -> dict:
        return asdict(self)

    def build(self, gallery: np.ndarray, seed: int = 0, client=None):
        """A fitted :class:`AnnIndex` or :class:`HashIndex` on ``gallery`` (trained on it when needed).

        With a Dask ``client`` an inverted-file index is filled in parallel shards and merged
        (:mod:`.sharded`; the same index as built here); other kinds are built here.
        """
        if self.hash:
            return HashIndex(make_hasher(self.hash, seed=seed), shortlist=self.shortlist).fit(gallery)
        if client is not None and can_shard(self.factory):
            return build_sharded(self.factory, gallery, client, nprobe=self.nprobe)
        return AnnIndex(self.factory, nprobe=self.nprobe, ef_search=self.ef_search).fit(gallery)


def write_index(index, folder: Path) -> list[str]:
    """Write ``index`` (an :class:`AnnIndex` or :class:`HashIndex`) into ``folder``; the file names."""
    folder = Path(folder)
    if isinstance(index, HashIndex):
        faiss.write_index_binary(index.binary_index_, str(folder / CODES_FILE))
        np.savez(folder / HASHER_FILE, mean=index.hasher.mean_, projection=index.hasher.projection_)
        return [CODES_FILE, HASHER_FILE]
    faiss.write_index(index.index_, str(folder / FAISS_FILE))
    return [FAISS_FILE]


def read_index(folder: Path, spec: IndexSpec, gallery: np.ndarray, mmap: bool = False):
    """The index :func:`write_index` wrote, searchable at once; ``gallery`` feeds a hash index's re-rank."""
    folder = Path(folder)
    flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
    if spec.hash:
        code = parse_method("hash", spec.hash)
        hasher = HASHERS[code.method](code.bits)
        with np.load(folder / HASHER_FILE) as saved:
            hasher.mean_, hasher.projection_ = saved["mean"], saved["projection"]
        index = HashIndex(hasher, shortlist=spec.shortlist)
        index.binary_index_ = faiss.read_index_binary(str(folder / CODES_FILE), flags)
        index.codes_ = None                      # held by the binary index; not needed to search
        index.gallery_ = gallery
        return index
    index = AnnIndex(spec.factory, nprobe=spec.nprobe, ef_search=spec.ef_search)
    index.index_ = faiss.read_index(str(folder / FAISS_FILE), flags)
    index.apply_search_params()
    return index


def add_to_index(index, vectors: np.ndarray, gallery: np.ndarray) -> None:
    """Append ``vectors`` (ids continue from ``ntotal``); ``gallery``: all float vectors, the new ones last.

    The hash code maker and an IVF quantiser stay as trained: new items are coded or assigned to
    cells with what was learned from the first gallery.  A clear error where faiss cannot add.
    """
    try:
        if isinstance(index, HashIndex):
            index.binary_index_.add(index.hasher.transform(vectors))
            index.gallery_ = gallery
        else:
            index.add(vectors)
    except RuntimeError as err:
        raise CbirError(f"this index cannot add vectors ({str(err).strip().splitlines()[-1]}); "
                        "rebuild the collection with the new images instead") from err
