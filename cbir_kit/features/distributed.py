"""Stage 2, features: extraction on a Dask cluster, one task per feature-cache chunk (notebook 01, docs/scale.md).

The missing rows of a cache entry are cut into tasks of whole batches, each range cut from its
start exactly as the in-process path cuts its batches, so every batch the network sees is the
same and the features are bit-identical.  A task runs :func:`embed_chunk` on a worker:

1. it takes the worker's extractor for the model, built on the worker's first task and kept
   for the next ones (:data:`WORKER_EXTRACTORS`; library code, so it is not pickled by value);
2. embeds its rows and writes its chunk file into the entry's ``KEY.partial/`` folder
   (atomically; on several machines the cache folder must be shared storage);
3. returns the chunk's record.

The driver alone writes ``manifest.json``, one record at a time as tasks finish, and draws one
progress bar over all of them.  A worker that dies is replaced and its task rerun by Dask; a
driver that dies leaves the chunks its manifest lists, and the next run extracts only the rest
(chunk files no manifest lists are discarded then).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ..cluster import cluster_client, gather_checked, parse_cluster
from ..datasets.images import describe
from .cache import default_chunk_size, record_chunk, write_chunk
from .extractor import Extractor

TASK_BATCHES = 16                 # batches per task: about 4 s of EfficientNet-Lite0 work on one CPU thread
WORKER_EXTRACTORS: dict = {}      # in each worker process: recipe -> its Extractor


@dataclass(frozen=True)
class Recipe:
    """What a worker needs to build the same extractor as the driver's."""

    spec: str
    pretrained: bool
    device: str
    batch_size: int
    precision: str

    @classmethod
    def of(cls, extractor: Extractor) -> "Recipe":
        return cls(extractor.spec, extractor.pretrained, extractor.device.type, extractor.batch_size,
                   extractor.precision)

    def build(self) -> Extractor:
        """One decoding thread and one forward stream per worker thread (the worker's cores are its own)."""
        if self not in WORKER_EXTRACTORS:
            WORKER_EXTRACTORS[self] = Extractor(self.spec, device=self.device, pretrained=self.pretrained,
                                                batch_size=self.batch_size, precision=self.precision,
                                                num_workers=1, num_threads=1, streams=1)
        return WORKER_EXTRACTORS[self]


def task_ranges(gaps: Sequence[tuple[int, int]], batch_size: int, rows: int) -> list[tuple[int, int]]:
    """Each gap ``[a, b)`` cut from ``a`` into ranges of ``rows`` rows (a multiple of ``batch_size``)."""
    rows = max(batch_size, rows - rows % batch_size)
    return [(s, min(s + rows, b)) for a, b in gaps for s in range(a, b, rows)]


def embed_chunk(recipe: Recipe, images: list, start: int, part: str) -> dict:
    """Worker task: embed ``images`` (rows ``start``...) in the driver's batches and write their chunk."""
    extractor = recipe.build()
    rows = _Rows(images, start)                        # the extractor addresses images by their entry row
    batches = list(extractor.stream(rows, extractor.batch_ranges(start, start + len(images))))
    return write_chunk(Path(part), batches)


class _Rows:
    """``images`` seen as rows ``start``, ``start + 1``, ... of the whole entry."""

    def __init__(self, images: list, start: int):
        self.images, self.start = images, start

    def __getitem__(self, row: int):
        return self.images[row - self.start]

    def __len__(self) -> int:
        return self.start + len(self.images)


class ClusterExtraction:
    """The ``remote`` of a :class:`~cbir_kit.features.cache.FeatureCache`: missing rows extracted on a cluster.

    Use as a context manager; the cluster (``local:N``) starts at the first extraction, so a run
    whose features are all cached never starts one, and stops when the block ends.
    """

    def __init__(self, cluster, rows_per_task: int | None = None):
        parse_cluster(cluster)
        self.cluster = cluster
        self.rows_per_task = rows_per_task
        self._stack = contextlib.ExitStack()
        self._client = None
        self.tasks_run = 0

    def __enter__(self) -> "ClusterExtraction":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = self._stack.enter_context(cluster_client(self.cluster))
        return self._client

    def __call__(self, part: Path, manifest: dict, extractor: Extractor, images: Sequence, gaps: list,
                 progress: bool, desc: str) -> None:
        manifest["dim"] = extractor.dim
        recipe = Recipe.of(extractor)
        ranges = task_ranges(gaps, extractor.batch_size, self._rows(gaps, extractor.batch_size))
        futures = [self.client.submit(embed_chunk, recipe, list(images[a:b]), a, str(part), pure=False)
                   for a, b in ranges]
        n = len(images)
        with tqdm(total=n, initial=n - sum(b - a for a, b in gaps), desc=f"{desc} [{extractor.spec}, cluster]",
                  unit="img", disable=not progress, leave=False) as bar:
            for i, record in gather_checked(self.client, futures, lambda i: self._describe(images, ranges[i])):
                record_chunk(part, manifest, record)
                bar.update(record["rows"])
                self.tasks_run += 1

    def _rows(self, gaps: list, batch_size: int) -> int:
        """Rows per task: as asked (or ``$CBIR_CHUNK_SIZE``), else :data:`TASK_BATCHES` batches, but small
        enough that every worker gets about four tasks (a small job is still spread over all of them)."""
        fixed = self.rows_per_task or default_chunk_size()
        if fixed:
            return fixed
        workers = max(1, len(self.client.scheduler_info()["workers"]))
        missing = sum(b - a for a, b in gaps)
        return min(TASK_BATCHES * batch_size, max(batch_size, -(-missing // (4 * workers))))

    @staticmethod
    def _describe(images: Sequence, rows: tuple[int, int]) -> str:
        a, b = rows
        return f"extracting images {a}-{b - 1} ({describe(images[a])} ...)"


def cluster_extraction(cluster) -> ClusterExtraction | contextlib.nullcontext:
    """A :class:`ClusterExtraction` for a cluster spec, or a null context (``remote`` None) for ``none``."""
    return contextlib.nullcontext() if parse_cluster(cluster)[0] == "none" else ClusterExtraction(cluster)
