"""Stage 6, timings: the harness that times named stages alike in notebooks, the CLI and the grader (notebook 03).

Timing harness: time named pipeline stages the same way in notebooks, the CLI and the grader.

A :class:`Bench` times each stage with ``warmup`` untimed calls, then ``repeats`` timed
calls, and reports the **median** (robust to a stray slow run).  Per-query latency comes
from :meth:`Bench.per_item`, which times every query on its own and reports p50 / p95
(nearest-rank percentiles of the per-query times).  Throughput = items / median time
(images/s for ``load`` / ``embed``, queries/s for ``search`` / ``rerank`` / ``threshold``).

Memory: the peak of Python-visible allocations during each stage (``tracemalloc``; numpy
arrays are included, memory allocated inside torch or faiss is not) and the process-wide
peak resident set size (``resource.getrusage(...).ru_maxrss``; Unix only).

The environment (device, torch and faiss thread counts, CPU count, Python) is recorded
next to the numbers, because a timing means nothing without it.  The result renders as a
pandas DataFrame (``to_frame()``, and as HTML in Jupyter) and serialises to JSON.

Example::

    bench = Bench(warmup=1, repeats=5)
    bench.run("index_build", ExactIndex().fit, gallery)
    bench.per_item("search", lambda q: index.search(q[None], 10), queries)
    bench.result().to_frame()
"""
from __future__ import annotations

import os
import platform
import sys
import time
import tracemalloc
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import CbirError

STAGES = ("load", "embed", "index_build", "search", "rerank", "threshold")
UNITS = {"load": "images", "embed": "images", "index_build": "images",
         "search": "queries", "rerank": "queries", "threshold": "queries"}


def percentile_nearest_rank(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile: the ceil(q/100 * n)-th smallest value."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    if len(values) == 0:
        return float("nan")
    rank = max(1, int(np.ceil(q / 100.0 * len(values))))
    return float(values[rank - 1])


def max_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def environment(device: str = "cpu") -> dict:
    """Device, thread counts and versions that a timing depends on."""
    env: dict[str, Any] = {"device": device, "cpu_count": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform(), "numpy": np.__version__}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
    if "faiss" in sys.modules:
        env["faiss_threads"] = sys.modules["faiss"].omp_get_max_threads()
    return env


@dataclass
class StageTiming:
    """The measurements of one stage; ``times_s`` holds one entry per timed repeat."""

    name: str
    times_s: list[float]
    n_items: int | None = None
    unit: str | None = None
    latencies_ms: list[float] | None = None  # per-item times when measured one item at a time
    peak_traced_mb: float | None = None
    warmup: int = 0

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s))

    @property
    def per_item_ms(self) -> float | None:
        if self.latencies_ms:
            return float(np.median(self.latencies_ms))
        return 1000.0 * self.median_s / self.n_items if self.n_items else None

    @property
    def p50_ms(self) -> float | None:
        return percentile_nearest_rank(self.latencies_ms, 50) if self.latencies_ms else None

    @property
    def p95_ms(self) -> float | None:
        return percentile_nearest_rank(self.latencies_ms, 95) if self.latencies_ms else None

    @property
    def throughput(self) -> float | None:
        """Items per second: n_items / median time."""
        return self.n_items / self.median_s if self.n_items and self.median_s > 0 else None

    def row(self) -> dict:
        unit = self.unit or "items"
        return {"stage": self.name, "median_s": self.median_s, "repeats": len(self.times_s), "warmup": self.warmup,
                "n_items": self.n_items, "unit": self.unit, "ms_per_item": self.per_item_ms,
                "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, f"{unit}_per_s": self.throughput,
                "peak_traced_mb": self.peak_traced_mb}


@dataclass
class BenchResult:
    """All stages of one benchmark plus the environment; a DataFrame and a JSON document."""

    stages: list[StageTiming]
    env: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> StageTiming:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def to_frame(self):
        """One row per stage: median time, p50/p95 latency, throughput, peak memory."""
        import pandas as pd

        frame = pd.DataFrame([s.row() for s in self.stages]).set_index("stage")
        return frame.dropna(axis=1, how="all")

    def to_dict(self) -> dict:
        stages = []
        for s in self.stages:
            d = asdict(s)
            d.update(median_s=s.median_s, ms_per_item=s.per_item_ms, p50_ms=s.p50_ms, p95_ms=s.p95_ms,
                     throughput=s.throughput)
            stages.append(d)
        return {"stages": stages, "env": self.env}

    def write_json(self, path) -> None:
        """Write ``to_dict()`` atomically (temporary file, then rename)."""
        from .._io import write_json

        write_json(path, self.to_dict())

    def __str__(self) -> str:
        return self.to_frame().to_string(float_format=lambda v: f"{v:.4g}")

    def _repr_html_(self) -> str:
        return self.to_frame()._repr_html_()


class Bench:
    """Times stages with warm-up and repeats; ``result()`` collects them.

    ``device`` is recorded and, for ``cuda``, each timed call is followed by
    ``torch.cuda.synchronize()`` so GPU work is inside the measured interval.
    """

    def __init__(self, warmup: int = 1, repeats: int = 5, device: str = "cpu", trace_memory: bool = True):
        if warmup < 0 or repeats < 1:
            raise CbirError(f"Bench needs warmup >= 0 and repeats >= 1; got warmup={warmup}, repeats={repeats}")
        self.warmup = warmup
        self.repeats = repeats
        self.device = str(device)
        self.trace_memory = trace_memory
        self.stages: list[StageTiming] = []

    def _sync(self) -> None:
        if self.device.startswith("cuda") and "torch" in sys.modules:
            sys.modules["torch"].cuda.synchronize()

    @contextmanager
    def _memory(self, out: dict):
        started = False
        if self.trace_memory:
            if tracemalloc.is_tracing():
                tracemalloc.reset_peak()
            else:
                tracemalloc.start()
                started = True
        try:
            yield
        finally:
            if self.trace_memory:
                out["peak"] = tracemalloc.get_traced_memory()[1] / 2**20
                if started:
                    tracemalloc.stop()

    def _unit(self, name: str, unit: str | None) -> str | None:
        return unit if unit is not None else UNITS.get(name)

    def run(self, name: str, fn: Callable, *args, n_items: int | None = None, unit: str | None = None,
            **kwargs) -> Any:
        """Call ``fn(*args, **kwargs)`` ``warmup`` times untimed, then ``repeats`` times timed.

        Returns the last call's value.  ``n_items`` (images or queries processed per call)
        gives the throughput.
        """
        for _ in range(self.warmup):
            fn(*args, **kwargs)
        self._sync()
        times, mem, value = [], {}, None
        with self._memory(mem):
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                value = fn(*args, **kwargs)
                self._sync()
                times.append(time.perf_counter() - t0)
        self.stages.append(StageTiming(name, times, n_items, self._unit(name, unit),
                                       peak_traced_mb=mem.get("peak"), warmup=self.warmup))
        return value

    def per_item(self, name: str, fn: Callable, items: Sequence, unit: str | None = None) -> list:
        """Time ``fn(item)`` for every item separately (p50 / p95 latency), after ``warmup`` calls.

        The stage's total time is the sum of the per-item times; returns the outputs.
        """
        if len(items) == 0:
            raise CbirError(f"stage {name!r}: no items to time")
        for i in range(min(self.warmup, len(items))):
            fn(items[i])
        self._sync()
        latencies, outputs, mem = [], [], {}
        with self._memory(mem):
            for item in items:
                t0 = time.perf_counter()
                outputs.append(fn(item))
                self._sync()
                latencies.append(1000.0 * (time.perf_counter() - t0))
        self.stages.append(StageTiming(name, [sum(latencies) / 1000.0], len(items), self._unit(name, unit),
                                       latencies_ms=latencies, peak_traced_mb=mem.get("peak"), warmup=self.warmup))
        return outputs

    @contextmanager
    def stage(self, name: str, n_items: int | None = None, unit: str | None = None):
        """Time one run of a ``with`` block (for stages too slow to repeat, e.g. embedding a dataset)."""
        mem: dict = {}
        with self._memory(mem):
            t0 = time.perf_counter()
            yield
            self._sync()
            elapsed = time.perf_counter() - t0
        self.stages.append(StageTiming(name, [elapsed], n_items, self._unit(name, unit),
                                       peak_traced_mb=mem.get("peak")))

    def result(self) -> BenchResult:
        env = environment(self.device)
        env["max_rss_mb"] = max_rss_mb()
        return BenchResult(list(self.stages), env)
