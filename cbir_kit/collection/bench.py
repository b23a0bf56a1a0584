"""Collections: what a user of a collection waits for, measured (``cbir bench collection``, notebook 02).

Two numbers, each measured side by side with its alternative in one run:

* **one new query image, end to end**: decode, embed with the collection's model, search; the
  median (p50) and p95 over queries timed one at a time, after one untimed warm-up query that
  builds the model (its time is reported apart, as ``model_load_s``).  The split into
  ``embed_ms`` and ``search_ms`` comes from :attr:`Collection.timings_`.
* **opening a large collection**: a synthetic collection of ``size`` unit vectors of the model's
  dimension (exact Flat index) is written once, then opened memory-mapped (manifest, sizes, a
  mapped faiss index: ``IO_FLAG_MMAP_IFC``) and read whole with every checksum verified, and
  searched twice after each open: the first search of a mapped exact index reads every page of
  it from disk (unless the OS still caches them), the second finds them in memory.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..bench.harness import Bench
from ..datasets import load
from ..features.specs import OFFLINE_MODEL
from ..runtime import Runtime
from .collection import Collection


def bench_query(dataset: str = "demo", model: str = OFFLINE_MODEL, n_queries: int = 20,
                runtime: Runtime | None = None) -> dict:
    """Milliseconds of one new query image end to end on a collection of ``dataset``'s gallery."""
    runtime = runtime or Runtime(device="cpu", progress=False)
    ds = load(dataset, root=runtime.root)
    queries = [q for q in ds.query if isinstance(q, (str, Path))][:n_queries]
    with tempfile.TemporaryDirectory(prefix="cbir-bench-") as tmp:
        c = Collection.build(ds, Path(tmp) / "c", model=model, runtime=runtime)
        c = Collection.open(Path(tmp) / "c", runtime=runtime)
        t0 = time.perf_counter()
        c.search(images=queries[:1], k=10)                     # builds the model
        model_load_s = time.perf_counter() - t0
        parts = []

        def one(image):
            c.search(images=[image], k=10)
            parts.append(c.timings_)

        bench = Bench(warmup=0, repeats=1, device=runtime.device, trace_memory=False)
        bench.per_item("query", one, queries)
        stage = bench.result()["query"]
    return {"dataset": ds.name, "model": model, "n_collection": len(c), "n_queries": len(queries),
            "model_load_s": model_load_s, "p50_ms": stage.p50_ms, "p95_ms": stage.p95_ms,
            "embed_ms": float(np.median([p["embed_ms"] for p in parts])),
            "search_ms": float(np.median([p["search_ms"] for p in parts])), "env": bench.result().env}


def bench_open(size: int = 1_000_000, dim: int = 1280, folder: str | None = None, seed: int = 0) -> dict:
    """Seconds to open a ``size`` x ``dim`` collection memory-mapped vs read and verified, and a first search."""
    rng = np.random.default_rng(seed)
    vectors = np.empty((size, dim), dtype=np.float32)
    for a in range(0, size, 100_000):                           # unit vectors, made in blocks
        block = rng.standard_normal((min(100_000, size - a), dim), dtype=np.float32)
        vectors[a:a + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    query = vectors[:1].copy()
    work = Path(tempfile.mkdtemp(prefix="cbir-bench-open-", dir=folder))
    try:
        t0 = time.perf_counter()
        Collection.from_vectors(vectors, [f"synthetic/{i}.jpg" for i in range(size)], work / "c",
                                model=OFFLINE_MODEL)
        build_s = time.perf_counter() - t0
        del vectors
        out = {"size": size, "dim": dim, "build_s": build_s,
               "bytes_on_disk": sum(p.stat().st_size for p in (work / "c").rglob("*") if p.is_file())}
        for name, mmap in (("mmap", True), ("full", False)):
            t0 = time.perf_counter()
            c = Collection.open(work / "c", mmap=mmap)
            out[f"open_{name}_s"] = time.perf_counter() - t0
            for which in ("first", "second"):      # the first search of a mapped index reads its pages from disk
                t0 = time.perf_counter()
                hit = c.search(vectors=query, model=OFFLINE_MODEL, k=10)[0].results[0]
                out[f"{which}_search_{name}_ms"] = 1000 * (time.perf_counter() - t0)
                assert hit.id == 0, "the query is item 0 of the collection"
            del c
        out["open_ratio"] = out["open_full_s"] / out["open_mmap_s"]
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def format_bench(query: dict | None, opened: dict | None) -> str:
    lines = []
    if query:
        lines += [f"one new query image, end to end ({query['model']}, collection of {query['n_collection']} "
                  f"{query['dataset']} images, {query['n_queries']} queries timed one at a time)",
                  f"  p50 {query['p50_ms']:.1f} ms   p95 {query['p95_ms']:.1f} ms   "
                  f"(decode + embed {query['embed_ms']:.1f} ms, search {query['search_ms']:.2f} ms; "
                  f"model load once {query['model_load_s']:.2f} s)"]
    if opened:
        lines += [f"opening a {opened['size']:,} x {opened['dim']} collection (Flat, "
                  f"{opened['bytes_on_disk'] / 2**30:.1f} GiB on disk, built in {opened['build_s']:.1f} s)",
                  f"  memory-mapped   {1000 * opened['open_mmap_s']:9.1f} ms   first search "
                  f"{opened['first_search_mmap_ms']:.0f} ms, second {opened['second_search_mmap_ms']:.0f} ms",
                  f"  read + verified {1000 * opened['open_full_s']:9.1f} ms   first search "
                  f"{opened['first_search_full_ms']:.0f} ms, second {opened['second_search_full_ms']:.0f} ms",
                  f"  memory-mapped opens {opened['open_ratio']:.0f}x faster"]
    return "\n".join(lines)
