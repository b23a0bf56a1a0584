"""Stage 6, timings: ``cbir bench search``, exact, IVF, HNSW, IVF-PQ and hash shortlist side by side (notebooks 02, 04).

Every method searches the same gallery with the same queries, at each gallery size, in one
run.  Per method and size it reports:

* ``build_s``: training (k-means, codebooks, ITQ rotation) + adding the gallery, wall seconds;
* ``batched_ms``: all queries in one ``search`` call, median of repeats / number of queries;
* ``single_ms``: one query per call (median over queries; ``single_p95_ms`` its p95);
* ``recall@k``: (1 / Q) sum_q |top-k(q) ∩ exact top-k(q)| / k, against exact Flat search;
* ``bytes_per_vector``: what the index holds in RAM per gallery vector, counted by
  serialising the faiss index (vectors, codes, ids, graph links, centroids); for the hash
  methods the packed codes plus the float vectors that the re-rank reads;
* ``speedup_batched`` / ``speedup_single``: exact Flat ms/query divided by the method's.

Search-time knobs are tuned on a separate set of tuning queries (same distribution, never
measured): the smallest ``nprobe`` (IVF), ``efSearch`` (HNSW) or shortlist size ``m`` (hash)
whose recall@k reaches ``target_recall``; when none does, the smallest whose recall is
within 0.005 of the best seen.  The tuning curve is kept in the output.

Features.  All methods search L2-normalised vectors by inner product (cosine).  The vectors
live in a ``dim``-dimensional space: real features (``(N, D_real)``) are centred, projected
on their top-``dim`` principal directions and L2-normalised.  When there are enough real
vectors for a gallery size (gallery + queries) they are used as they are ("real"); otherwise
vectors are synthesised to match the real set's statistics ("synthetic") by
:class:`MixtureSynth`: a Gaussian mixture in the PCA space whose components are the
k-means clusters of the real set, each with its own mean and sample covariance:

    y = m_c + sqrt(1 - f) * R_c^T a / sqrt(n_c - 1) + sqrt(f * tr(S_c) / dim) * e,
    c ~ Categorical(n_c / N),  a ~ N(0, I_{n_c}),  e ~ N(0, I_dim),

(``R_c``: the cluster's centred members, S_c = R_c^T R_c / (n_c - 1); the fraction ``f`` of
each cluster's variance is spread isotropically so samples are not confined to the span of
its few members), then L2-normalised.  The output reports the real and synthetic
statistics side by side (mean cosine of the 1st and 10 nearest neighbours among 1,000
vectors, top eigenvalues of the covariance) so the match can be judged.

The binary-hash course project's "Algo 2" is timed its own way beside cbir_kit's: a corpus
of ``n`` L2-normalised 100-d embeddings queries itself (their protocol), one
``torch.mv`` + ``torch.topk`` per query, against :class:`~cbir_kit.index.ExactIndex` searching
all queries in one batched call; ``ratio`` = per-query ms of the loop / per-query ms batched.
It runs at their k = 250 and at the benchmark's k = 10 (the top-k selection is a large part
of the batched cost at k = 250).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import faiss
import numpy as np
from sklearn.cluster import KMeans

from .harness import Bench, environment, max_rss_mb
from ..errors import CbirError
from ..index.ann import AnnIndex, recall_vs_exact
from ..index.exact import ExactIndex
from ..index.hashing import HashIndex, ITQHasher
from .settings import DEFAULT_SIZES, EF_GRID, HASH_FIT_SAMPLE, METHODS, NPROBE_GRID, SHORTLIST_GRID


# -- features -------------------------------------------------------------------------------
def normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class MixtureSynth:
    """PCA to ``dim`` dimensions, then a Gaussian mixture of the real set's clusters (module docstring).

    ``fit(real)`` learns ``mean_`` (D_real,), ``components_`` (D_real, dim), the clusters'
    ``centers_``, ``members_`` (centred members in PCA coordinates) and ``weights_``;
    ``transform(real)`` maps real features into the benchmark space; ``sample(n, rng)`` draws
    ``n`` synthetic L2-normalised vectors.
    """

    def __init__(self, dim: int = 256, n_clusters: int = 20, isotropic: float = 0.1, seed: int = 0):
        if not 0.0 <= isotropic <= 1.0:
            raise CbirError(f"isotropic fraction must be in [0, 1]; got {isotropic}")
        self.dim = dim
        self.n_clusters = n_clusters
        self.isotropic = isotropic
        self.seed = seed

    def fit(self, real: np.ndarray) -> "MixtureSynth":
        real = np.asarray(real, dtype=np.float64)
        n, d_real = real.shape
        if self.dim > min(n - 1, d_real):
            raise CbirError(f"dim={self.dim} is larger than the real features allow (PCA of {n} vectors of "
                            f"dimension {d_real} has at most {min(n - 1, d_real)} components); use a smaller dim=")
        self.mean_ = real.mean(axis=0)
        _, _, vt = np.linalg.svd(real - self.mean_, full_matrices=False)
        self.components_ = vt[:self.dim].T
        y = (real - self.mean_) @ self.components_
        k = max(1, min(self.n_clusters, n // 10))
        labels = KMeans(k, n_init=3, random_state=self.seed).fit_predict(y)
        groups = [y[labels == c] for c in range(k)]
        groups = [g for g in groups if len(g) >= 2]
        self.centers_ = [g.mean(axis=0) for g in groups]
        self.members_ = [g - g.mean(axis=0) for g in groups]
        sizes = np.array([len(g) for g in groups], dtype=np.float64)
        self.weights_ = sizes / sizes.sum()
        return self

    def transform(self, real: np.ndarray) -> np.ndarray:
        """Real features in the benchmark space: normalise((x - mean) P)."""
        return normalise((np.asarray(real, dtype=np.float64) - self.mean_) @ self.components_)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` mixture draws in PCA coordinates, before L2-normalising, float64 (n, dim)."""
        which = rng.choice(len(self.weights_), size=n, p=self.weights_)
        out = np.empty((n, self.dim))
        for c in np.unique(which):
            rows = np.flatnonzero(which == c)
            members = self.members_[c]
            a = rng.standard_normal((len(rows), len(members))) / math.sqrt(len(members) - 1)
            spread = math.sqrt(self.isotropic * (members ** 2).sum() / (len(members) - 1) / self.dim)
            out[rows] = (self.centers_[c] + math.sqrt(1.0 - self.isotropic) * (a @ members)
                         + spread * rng.standard_normal((len(rows), self.dim)))
        return out

    def sample(self, n: int, rng: np.random.Generator, chunk: int = 50_000) -> np.ndarray:
        """``n`` synthetic vectors: draws L2-normalised, float32 (n, dim), made ``chunk`` at a time."""
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, chunk):
            out[start:start + chunk] = normalise(self.draw(min(chunk, n - start), rng))
        return out


def feature_statistics(x: np.ndarray, n: int = 1000, seed: int = 0) -> dict:
    """Mean cosine of each vector's 1st and 10 nearest neighbours among ``n`` of them; top eigenvalues."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) > n:
        x = x[np.random.default_rng(seed).choice(len(x), n, replace=False)]
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    top = -np.sort(-sim, axis=1)[:, :10]
    eig = np.linalg.eigvalsh(np.cov(x.T.astype(np.float64)))[::-1]
    return {"nn1_cos": float(top[:, 0].mean()), "nn10_cos": float(top.mean()),
            "eig_top": [float(eig[i]) for i in (0, 9, 99) if i < len(eig)], "n": len(x)}


def dataset_features(dataset: str, model: str, root=None, cache_dir=None, device: str = "cpu",
                     progress: bool = True) -> tuple[np.ndarray, str]:
    """Query + gallery features of a dataset (through the feature cache), rows that failed dropped."""
    from ..datasets import load
    from ..features import FeatureCache, create_extractor

    ds = load(dataset, root=root)
    ex = create_extractor(model, device=device)
    cache = FeatureCache(cache_dir)
    splits = [("gallery", ds.gallery)] + ([] if ds.leave_one_out else [("query", ds.query)])  # no duplicates
    parts = [cache.get_or_extract(ex, images, progress=progress, desc=name)[0].vectors
             for name, images in splits if len(images)]
    x = np.concatenate(parts)
    x = x[np.isfinite(x).all(axis=1)]
    return x, f"{ds.name} ({len(x)} images), {model} {x.shape[1]}-d"


def file_features(path) -> tuple[np.ndarray, str]:
    path = Path(path)
    try:
        x = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise CbirError(f"path={str(path)!r}: cannot read a .npy feature array ({err}); save one with "
                        "numpy.save") from err
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise CbirError(f"path={str(path)!r} must hold a 2-D float feature array (N, D); got {x.dtype} {x.shape}")
    return x, f"{path.name} ({x.shape[0]} vectors, {x.shape[1]}-d)"


@dataclass
class Corpus:
    """Gallery, tuning queries and measured queries of one size, and where they came from."""

    gallery: np.ndarray
    tune: np.ndarray
    queries: np.ndarray
    source: str  # "real" or "synthetic"


def make_corpus(real: np.ndarray, synth: MixtureSynth, size: int, n_queries: int, seed: int) -> Corpus:
    """Real vectors when there are enough (shuffled, split), else samples of ``synth``."""
    rng = np.random.default_rng(seed + size)
    need = size + 2 * n_queries
    if len(real) >= need:
        order = rng.permutation(len(real))[:need]
        x = synth.transform(np.asarray(real)[np.sort(order)])[rng.permutation(need)]
        return Corpus(x[:size], x[size:size + n_queries], x[size + n_queries:], "real")
    x = synth.sample(need, rng)
    return Corpus(x[:size], x[size:size + n_queries], x[size + n_queries:], "synthetic")


# -- methods -------------------------------------------------------------------------------
def n_lists(n: int) -> int:
    """IVF cells: the power of two nearest sqrt(n), between 16 and 1024."""
    return int(min(1024, max(16, 2 ** round(math.log2(math.sqrt(n))))))


@dataclass
class Method:
    """One search method: ``make()`` an unbuilt index, ``set(index, value)`` its search knob.

    ``family`` names the method across gallery sizes (the IVF cell count grows with the size).
    """

    name: str
    make: Callable[[], object]
    knob: str | None = None
    grid: Sequence[int] = ()
    set: Callable[[object, int], None] | None = None
    family: str = ""

    def __post_init__(self):
        self.family = self.family or self.name


def _set_faiss_param(name: str) -> Callable:
    def apply(index: AnnIndex, value: int) -> None:
        faiss.ParameterSpace().set_index_parameter(index.index_, name, int(value))
    return apply


def _set_shortlist(index: HashIndex, value: int) -> None:
    index.shortlist = int(value)


def build_methods(names: Sequence[str], n: int, dim: int, k: int, seed: int) -> list[Method]:
    """The methods named in ``names`` (see :data:`METHODS`) for an ``n``-vector ``dim``-d gallery."""
    nlist = n_lists(n)
    pq = dim // 8
    table = {
        "flat": lambda: Method("Flat", lambda: ExactIndex("ip")),
        "ivf": lambda: Method(f"IVF{nlist},Flat", lambda: AnnIndex(f"IVF{nlist},Flat"), "nprobe",
                              [p for p in NPROBE_GRID if p <= nlist], _set_faiss_param("nprobe"), "IVF,Flat"),
        "hnsw": lambda: Method("HNSW32", lambda: AnnIndex("HNSW32"), "efSearch",
                               [e for e in EF_GRID if e >= k], _set_faiss_param("efSearch")),
        "ivfpq": lambda: Method(f"IVF{nlist},PQ{pq}", lambda: AnnIndex(f"IVF{nlist},PQ{pq}"), "nprobe",
                                [p for p in NPROBE_GRID if p <= nlist], _set_faiss_param("nprobe"), f"IVF,PQ{pq}"),
    }
    out = []
    for name in names:
        if name in table:
            out.append(table[name]())
            continue
        bits = int(name[3:])
        out.append(Method(f"ITQ{bits}+rerank", lambda bits=bits: HashIndex(ITQHasher(bits, seed=seed)), "shortlist",
                          [m for m in SHORTLIST_GRID if k <= m <= n], _set_shortlist))
    return out


def parse_methods(spec: str | Sequence[str] | None, dim: int) -> list[str]:
    names = list(METHODS) if spec is None else ([s.strip() for s in spec.split(",") if s.strip()]
                                                if isinstance(spec, str) else list(spec))
    for name in names:
        ok = name in METHODS[:4] or (name.startswith("itq") and name[3:].isdigit() and int(name[3:]) % 8 == 0
                                     and int(name[3:]) > 0)
        if not ok:
            raise CbirError(f"methods= names an unknown method {name!r}; choose from flat, ivf, hnsw, ivfpq, "
                            "itqBITS (BITS a multiple of 8, e.g. itq64)")
        if name.startswith("itq") and int(name[3:]) > dim:
            raise CbirError(f"methods= asks for {name}, but ITQ needs at least as many dimensions as bits; "
                            f"got dim={dim}")
    if "flat" not in names:
        names.insert(0, "flat")  # the reference every recall and speed-up is measured against
    return names


def index_bytes(index) -> int:
    """Bytes of everything the index keeps to answer queries (faiss serialisation, counted, not stored)."""
    counted = [0]

    def count(buf) -> int:
        counted[0] += len(buf)
        return len(buf)

    if isinstance(index, HashIndex):
        return index.codes_.nbytes + index.gallery_.nbytes
    faiss_index = index.index_
    faiss.write_index(faiss_index, faiss.PyCallbackIOWriter(count))
    return counted[0]


def fit_index(method: Method, gallery: np.ndarray, seed: int):
    index = method.make()
    if isinstance(index, HashIndex) and len(gallery) > HASH_FIT_SAMPLE:
        sample = np.random.default_rng(seed).choice(len(gallery), HASH_FIT_SAMPLE, replace=False)
        index.hasher.fit(gallery[np.sort(sample)])
    return index.fit(gallery)


def tune(method: Method, index, tune_queries: np.ndarray, tune_exact: np.ndarray, k: int,
         target: float) -> tuple[int | None, list[dict]]:
    """The smallest knob value reaching ``target`` recall@k on the tuning queries (module docstring)."""
    if not method.grid:
        return None, []
    curve = []
    for value in method.grid:
        method.set(index, value)
        _, ids = index.search(tune_queries, k)
        curve.append({method.knob: int(value), f"recall@{k}": recall_vs_exact(ids, tune_exact, k)})
        if curve[-1][f"recall@{k}"] >= target:
            return int(value), curve
    best = max(c[f"recall@{k}"] for c in curve)
    return next(c[method.knob] for c in curve if c[f"recall@{k}"] >= best - 0.005), curve


def measure(method: Method, corpus: Corpus, exact: dict | None, k: int, target: float, repeats: int,
            n_single: int, seed: int) -> tuple[dict, dict]:
    """Build, tune and time one method on one corpus.

    Returns its row and its top-k ids on the measured and the tuning queries (the ground
    truth when ``exact`` is None, i.e. when ``method`` is exact Flat search).
    """
    build = Bench(trace_memory=False)
    with build.stage("index_build", n_items=len(corpus.gallery)):
        index = fit_index(method, corpus.gallery, seed)
    if exact is None:
        value, curve, tune_ids = None, [], index.search(corpus.tune, k)[1]
    else:
        value, curve = tune(method, index, corpus.tune, exact["tune_ids"], k, target)
        tune_ids = None
    if value is not None:
        method.set(index, value)
    bench = Bench(warmup=1, repeats=repeats, trace_memory=False)
    _, ids = bench.run("batched", index.search, corpus.queries, k, n_items=len(corpus.queries), unit="queries")
    bench.per_item("single", lambda q: index.search(q[None], k), list(corpus.queries[:n_single]), unit="queries")
    res = bench.result()
    n = len(corpus.gallery)
    row = {"size": n, "method": method.name, "family": method.family, "source": corpus.source, "knob": method.knob, "value": value,
           "build_s": build.result()["index_build"].median_s, "batched_ms": res["batched"].per_item_ms,
           "single_ms": res["single"].per_item_ms, "single_p95_ms": res["single"].p95_ms,
           f"recall@{k}": 1.0 if exact is None else recall_vs_exact(ids, exact["ids"], k),
           "bytes_per_vector": index_bytes(index) / n, "tuning": curve}
    if isinstance(index, HashIndex):
        row["code_bytes"] = index.hasher.bits // 8
    return row, {"ids": ids, "tune_ids": tune_ids}


# -- the binary-hash project's Algo 2 ----------------------------------------------------------
def algo2_comparison(corpus: np.ndarray, k: int = 250, repeats: int = 3) -> dict:
    """Their per-query torch loop against batched exact search on the same corpus (it queries itself)."""
    import torch

    emb = torch.from_numpy(np.ascontiguousarray(corpus, dtype=np.float32))
    bench = Bench(warmup=1, repeats=repeats, trace_memory=False)

    def algo2(i: int):
        return torch.topk(torch.mv(emb, emb[i]), k).indices

    loop_ids = torch.stack(bench.per_item("algo2_torch_loop", algo2, list(range(len(corpus))),
                                          unit="queries")).numpy()
    index = ExactIndex("ip").fit(corpus)
    _, ids = bench.run("cbir_kit_batched", index.search, corpus, k, n_items=len(corpus), unit="queries")
    res = bench.result()
    loop_ms = res["algo2_torch_loop"].median_s * 1000 / len(corpus)
    batched_ms = res["cbir_kit_batched"].per_item_ms
    return {"n": len(corpus), "dim": corpus.shape[1], "k": k, "queries": len(corpus),
            "torch_threads": torch.get_num_threads(),
            "algo2_ms_per_query": loop_ms, "algo2_p50_ms": res["algo2_torch_loop"].p50_ms,
            "batched_ms_per_query": batched_ms, "ratio": loop_ms / batched_ms,
            "top_k_overlap": recall_vs_exact(loop_ids, ids, k)}


# -- the whole benchmark ---------------------------------------------------------------------
def bench_search(real: np.ndarray, real_name: str, sizes: Sequence[int] = DEFAULT_SIZES, dim: int = 256,
                 n_queries: int = 100, k: int = 10, methods: str | Sequence[str] | None = None,
                 target_recall: float = 0.95, repeats: int = 3, n_single: int | None = None,
                 algo2_size: int | None = 10_000, algo2_dim: int = 100, algo2_k: Sequence[int] = (250, 10),
                 seed: int = 0,
                 progress: bool = True) -> dict:
    """Run every method at every gallery size on features shaped like ``real`` (module docstring)."""
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 100:
        raise CbirError(f"sizes={sizes} must be gallery sizes of at least 100")
    if dim < 8 or dim % 8:
        raise CbirError(f"dim={dim} must be a positive multiple of 8 (PQ codes take dim/8 bytes)")
    if n_queries < 1:
        raise CbirError(f"n_queries={n_queries} must be at least 1 (measured queries per size)")
    if k < 1:
        raise CbirError(f"k={k} must be at least 1")
    if k > sizes[0]:
        raise CbirError(f"k={k} is larger than the smallest gallery size {sizes[0]}")
    names = parse_methods(methods, dim)
    n_single = min(n_queries, n_single or n_queries)
    synth = MixtureSynth(dim, seed=seed).fit(real)
    say = print if progress else (lambda *a, **kw: None)
    rows = []
    sources = set()
    for size in sizes:
        corpus = make_corpus(real, synth, size, n_queries, seed)
        sources.add(corpus.source)
        exact = None
        for method in build_methods(names, size, dim, k, seed):
            say(f"[{size:>9,}] {method.name} ...", end="", flush=True, file=sys.stderr)
            row, found = measure(method, corpus, exact, k, target_recall, repeats, n_single, seed)
            if exact is None:  # Flat comes first: its results are the ground truth
                exact = dict(found, batched_ms=row["batched_ms"], single_ms=row["single_ms"])
            row["speedup_batched"] = exact["batched_ms"] / row["batched_ms"]
            row["speedup_single"] = exact["single_ms"] / row["single_ms"]
            say(f" recall@{k} {row[f'recall@{k}']:.3f}, {row['single_ms']:.3g} ms/query single", file=sys.stderr)
            rows.append(row)
        del corpus, exact
    stats_synth = feature_statistics(synth.sample(1000, np.random.default_rng(seed)))
    result = {
        "benchmark": "search", "k": k, "dim": dim, "n_queries": n_queries, "n_single_queries": n_single,
        "target_recall": target_recall, "repeats": repeats, "sizes": sizes, "seed": seed,
        "features": {
            "source": "/".join(sorted(sources)), "real_set": real_name, "n_real": len(real),
            "space": f"centred, PCA to {dim}-d, L2-normalised; inner product",
            "synthesis": (f"Gaussian mixture of the real set's {len(synth.weights_)} k-means clusters in PCA space, "
                          f"each with its own sample covariance, {synth.isotropic:.0%} of its variance isotropic"),
            "statistics": {"real": feature_statistics(synth.transform(real), seed=seed), "synthetic": stats_synth},
        },
        "results": rows,
    }
    if algo2_size:
        say(f"[Algo 2] {algo2_size:,} x {algo2_dim}-d, k={list(algo2_k)} ...", file=sys.stderr)
        algo2_dim = min(algo2_dim, len(real) - 1, real.shape[1])
        small = MixtureSynth(algo2_dim, seed=seed).fit(real)
        corpus = make_corpus(real, small, algo2_size, 0, seed).gallery
        result["algo2"] = [algo2_comparison(corpus, k=min(kk, algo2_size), repeats=repeats) for kk in algo2_k]
    env = environment("cpu")
    env["max_rss_mb"] = max_rss_mb()
    result["machine"] = env
    return result


def results_frame(result: dict):
    """The results as a DataFrame, one row per (size, method)."""
    import pandas as pd

    k = result["k"]
    cols = ["size", "method", "family", "knob", "value", "build_s", "batched_ms", "single_ms", f"recall@{k}",
            "bytes_per_vector", "speedup_batched", "speedup_single"]
    return pd.DataFrame([{c: r[c] for c in cols} for r in result["results"]])


def display_frame(result: dict):
    """The results for reading: the tuned knob as ``name=value``, no family column."""
    frame = results_frame(result)
    frame["value"] = [f"{kn}={int(v)}" if v is not None and v == v else "" for kn, v in zip(frame["knob"], frame["value"])]
    frame = frame.drop(columns=["knob", "family"]).rename(columns={"value": "knob"})
    sources = [r["source"] for r in result["results"]]
    if len(set(sources)) > 1:  # say which sizes used real vectors
        frame.insert(1, "features", sources)
    return frame


def format_result(result: dict) -> str:
    f = result["features"]
    st = f["statistics"]
    lines = [f"features: {f['source']} ({f['space']}); real set: {f['real_set']}"]
    if "synthetic" in f["source"]:
        lines.append(f"  synthesis: {f['synthesis']}")
    lines += ["  statistics real vs synthetic: "
             f"nn1 cos {st['real']['nn1_cos']:.3f} / {st['synthetic']['nn1_cos']:.3f}, "
             f"nn10 cos {st['real']['nn10_cos']:.3f} / {st['synthetic']['nn10_cos']:.3f}",
             f"queries: {result['n_queries']} batched, {result['n_single_queries']} one at a time; k={result['k']}; "
             f"knobs tuned to recall@{result['k']} >= {result['target_recall']} on separate tuning queries", ""]
    lines.append(display_frame(result).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for i, a in enumerate(result.get("algo2", [])):
        if i == 0:
            lines += ["", f"Algo 2 of the binary-hash project ({a['n']:,} x {a['dim']}-d corpus queries itself):"]
        lines.append(f"  k={a['k']}: per-query torch mv+topk {a['algo2_ms_per_query']:.4g} ms/query, cbir_kit "
                     f"batched exact {a['batched_ms_per_query']:.4g} ms/query, ratio {a['ratio']:.1f}x "
                     f"(top-{a['k']} overlap {a['top_k_overlap']:.4f})")
    m = result["machine"]
    lines += ["", f"machine: {m.get('cpu_count')} CPUs, faiss threads {m.get('faiss_threads')}, "
                  f"torch threads {m.get('torch_threads')}, {m.get('platform')}; peak RSS {m.get('max_rss_mb', 0):.0f} MiB"]
    return "\n".join(lines)
