"""Stage 3, index: an IVF index filled in parallel shards on a Dask cluster, merged into one (notebook 02, docs/scale.md).

1. The driver trains the index once (the coarse quantiser's k-means, and PQ codebooks; faiss
   trains on at most 256 vectors per list, its own seeded sample), exactly as one process does.
2. Each task gets the trained, empty index (serialised with ``faiss.serialize_index``) and one
   shard of the vectors, adds them (local ids 0..n_s - 1) and returns the filled index.
3. The driver merges the shards in order with ``merge_from(shard, offset)``, which appends each
   inverted list of the shard with its ids shifted by ``offset``, the number of vectors before it.

Every inverted list then holds the same entries in the same order as when one process adds all
the vectors, so the merged index returns the same neighbours with the same scores, ties
included.  Indexes without inverted lists are built in the driver: a Flat index has nothing to
train and its add is a copy, and an HNSW graph cannot be merged.
"""
from __future__ import annotations

import faiss
import numpy as np

from ..cluster import gather_checked
from .ann import AnnIndex
from .exact import as_float32_matrix


def can_shard(factory: str, d: int = 8) -> bool:
    """Whether ``factory`` makes an inverted-file index (the kind whose shards merge)."""
    try:
        return faiss.try_extract_index_ivf(faiss.index_factory(d, factory)) is not None
    except RuntimeError:
        return False


def fill_shard(trained: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Worker task: add ``vectors`` to a copy of the serialised ``trained`` index; the filled one, serialised."""
    index = faiss.deserialize_index(trained)
    index.add(vectors)
    return faiss.serialize_index(index)


def build_sharded(factory: str, vectors, client, n_shards: int | None = None, nprobe: int | None = None) -> AnnIndex:
    """An :class:`AnnIndex` of ``vectors`` trained here and filled in ``n_shards`` tasks (default: one per worker)."""
    vectors = as_float32_matrix(vectors, "gallery")
    index = AnnIndex(factory, nprobe=nprobe).train(vectors)
    n_shards = n_shards or max(1, len(client.scheduler_info()["workers"]))
    bounds = np.linspace(0, len(vectors), n_shards + 1).astype(int)
    trained = client.scatter(faiss.serialize_index(index.index_), broadcast=True)
    futures = [client.submit(fill_shard, trained, client.scatter(vectors[a:b]), pure=False)
               for a, b in zip(bounds[:-1], bounds[1:])]
    filled: dict[int, np.ndarray] = dict(gather_checked(
        client, futures, lambda i: f"adding vectors {bounds[i]}-{bounds[i + 1] - 1} to the index {factory!r}"))
    merged = faiss.extract_index_ivf(index.index_)
    for i in range(n_shards):
        shard = faiss.deserialize_index(filled[i])
        merged.merge_from(faiss.extract_index_ivf(shard), int(bounds[i]))
    if index.index_ is not merged:                  # a wrapper (IVF under a pre-transform) counts its vectors too
        index.index_.ntotal = merged.ntotal
    return index
