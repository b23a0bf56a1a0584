"""Collections: a gallery indexed once and searched many times, by image or by text (notebook 02).

``Collection.build(dataset, out)`` embeds a dataset's gallery (through the feature cache, so a
collection built after an evaluation extracts nothing again), builds the index and writes the
folder (:mod:`.store`).  ``Collection.open(dir)`` reads it back without the dataset loader;
``search(images=... | text=... | vectors=...)`` ranks the collection for each query by cosine
similarity s = q . g (features are L2-normalised), best first, ties by the lower item id;
``add(paths)`` embeds new images and appends them without rebuilding.

A collection remembers the model that embedded it and refuses queries embedded by another: a
vector of one network is meaningless in the space of another, even at the same dimension.
Text queries go through the CLIP text tower (:mod:`cbir_kit.features.text`).

With a saved threshold (:mod:`cbir_kit.threshold.saved`) a query returns every item whose
Euclidean distance d = sqrt(2 - 2 s) is below the rule's threshold for that query (static:
T; dynamic: T + w (mu_q - mu), mu_q the mean distance of the query's n nearest items) instead
of a fixed k.
"""
from __future__ import annotations

import getpass
import importlib.metadata
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from ..cluster import cluster_client, parse_cluster
from ..datasets import Dataset, load
from ..datasets.images import describe, fingerprint
from ..datasets.manifest import list_images
from ..errors import CbirError, CbirWarning, CollectionError
from ..features import FeatureCache, OFFLINE_MODEL, create_extractor
from ..features.specs import parse_model
from ..index.exact import as_float32_matrix
from ..index.persist import IndexSpec, add_to_index, read_index, write_index
from ..pipeline.job import embed_dataset
from ..runtime import Runtime, runtime_of
from ..threshold.saved import load_threshold
from . import store
from .items import Paths, label_codes, read_fingerprints, write_items

VECTORS = "vectors.npy"
GROWTH_WARNING = 2.0   # an index trained on N items, grown past 2N: suggest rebuilding


@dataclass
class Hit:
    """One result: its rank (1 = best), the item's path, cosine similarity and label (None if unlabelled)."""

    rank: int
    path: str
    score: float
    label: str | None
    id: int


@dataclass
class QueryResult:
    """The results of one query (an image path or a text); ``error`` instead when the query failed."""

    query: str
    results: list[Hit] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        out = {"query": self.query, "results": [{"rank": h.rank, "path": h.path, "score": h.score, "label": h.label}
                                                for h in self.results]}
        if self.error:
            out["error"] = self.error
        return out


def _item_path(ref) -> str:
    """The path stored for a gallery image: an absolute file path when it has one, else its description."""
    path = getattr(ref, "path", ref)
    if isinstance(path, (str, os.PathLike)):
        return str(Path(path).resolve())
    return describe(ref)


def _dataset_labels(ds: Dataset) -> list:
    labels = ds.gallery_labels
    if ds.class_names is not None and np.issubdtype(np.asarray(labels).dtype, np.integer):
        return [ds.class_names[int(i)] for i in labels]
    return [str(label) for label in labels]


def _toolkit_version() -> str:
    try:
        return importlib.metadata.version("cbir_kit")
    except importlib.metadata.PackageNotFoundError:    # run from a source tree that was never installed
        return "unknown"


def _created() -> dict:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(), "user": user,
            "cbir_kit": _toolkit_version()}


class Collection:
    """A collection folder, opened (module docstring).  Build with :meth:`build`, open with :meth:`open`."""

    def __init__(self, folder: Path, manifest: dict, vectors: np.ndarray, paths: Paths, labels: np.ndarray,
                 index, runtime: Runtime, mmap: bool):
        self.folder, self.manifest, self.vectors, self.paths, self.labels = folder, manifest, vectors, paths, labels
        self.index, self.runtime, self.mmap = index, runtime, mmap
        self._extractor = None

    # -- making and opening ---------------------------------------------------------------
    @classmethod
    def build(cls, dataset: str | Dataset, out, model: str = OFFLINE_MODEL, index: str | IndexSpec = "Flat", *,
              overwrite: bool = False, runtime: Runtime | None = None, **runtime_options) -> "Collection":
        """Embed ``dataset``'s gallery with ``model``, index it and write the collection to ``out``.

        ``runtime.cluster`` (or ``cluster=``): the missing features are extracted there and an IVF
        index is filled there in shards (the same collection as built in one process).
        ``index``: a faiss factory string or an :class:`IndexSpec` (hash codes, search knobs).
        Images that fail to load are reported and left out.  ``overwrite`` replaces an existing
        collection in ``out`` (readers see the old or the new one).
        """
        runtime = runtime_of(runtime, runtime_options)
        spec = index if isinstance(index, IndexSpec) else IndexSpec(index)
        ds = dataset if isinstance(dataset, Dataset) else load(dataset, root=runtime.root)
        with cluster_client(runtime.cluster) as client:      # one cluster for the features and the index
            on_cluster = runtime.replace(cluster=client) if client is not None else runtime
            ds, _, gallery, info = embed_dataset(ds, model, on_cluster)
            for image, reason in info["skipped"]:
                warnings.warn(f"left out {image}: {reason}", CbirWarning, stacklevel=2)
            cls.from_vectors(gallery, [_item_path(ref) for ref in ds.gallery], out, model=model,
                             labels=_dataset_labels(ds), fingerprints=info["gallery_fingerprints"], index=spec,
                             identity=info["extractor"].cache_identity(), source=ds.name,
                             overwrite=overwrite, runtime=on_cluster, features_cached=info["hit"])
        return cls.open(out, runtime=runtime)

    @classmethod
    def from_vectors(cls, vectors, paths: Sequence[str], out, model: str, *, labels: Sequence | None = None,
                     fingerprints: Sequence[str] | None = None, index: str | IndexSpec = "Flat",
                     identity: dict | None = None, source: str = "vectors", overwrite: bool = False,
                     runtime: Runtime | None = None, features_cached: bool | None = None) -> "Collection":
        """A collection of features embedded elsewhere by ``model`` (one row per path, L2-normalised)."""
        vectors = as_float32_matrix(vectors, "vectors")
        if len(paths) != len(vectors):
            raise CbirError(f"paths has {len(paths)} entries for {len(vectors)} vectors; give one path per row")
        parse_model(model)
        spec = index if isinstance(index, IndexSpec) else IndexSpec(index)
        out = Path(out)
        previous = _existing(out, overwrite)
        codes, names = label_codes(labels if labels is not None else [None] * len(paths), [])
        fingerprints = list(fingerprints) if fingerprints is not None else [f"row:{i}" for i in range(len(paths))]
        t0 = time.perf_counter()
        runtime = runtime or Runtime()
        kind, value = parse_cluster(runtime.cluster)
        client = value if kind == "client" else None
        built = spec.build(vectors, seed=runtime.seed, client=client)
        manifest = {"model": model, "identity": identity or {"model": model}, "text": _text_identity(model),
                    "dim": int(vectors.shape[1]), "n": len(vectors), "index": spec.to_dict(),
                    "trained_on": len(vectors), "label_names": names, "source": source, "created": _created(),
                    "history": [{"action": "build", "n": len(vectors), "utc": _created()["utc"],
                                 "index_build_s": round(time.perf_counter() - t0, 3),
                                 "features_cached": features_cached}]}

        def write(folder: Path) -> None:
            np.save(folder / VECTORS, vectors)
            write_items(folder, list(paths), codes, fingerprints)
            write_index(built, folder)

        with store.write_lock(out):
            previous = _existing(out, overwrite)              # again, under the lock: an add may have landed
            store.publish(out, write, manifest, previous)
        # just written and checksummed by publish: no need to read every byte back
        return cls.open(out, verify=False, runtime=runtime if client is None else runtime.replace(cluster="none"))

    @classmethod
    def open(cls, folder, mmap: bool = False, verify: bool | None = None, runtime: Runtime | None = None,
             **runtime_options) -> "Collection":
        """Open the collection in ``folder``.

        ``mmap`` maps the vectors, paths and index instead of reading them (a 1M-vector
        collection opens in milliseconds).  ``verify``: check every file's checksum against the
        manifest (default: yes unless ``mmap``; sizes are always checked).
        """
        folder = Path(folder)
        runtime = runtime_of(runtime, runtime_options)
        checksums = (not mmap) if verify is None else bool(verify)
        for attempt in range(3):
            manifest = store.read_manifest(folder)
            try:
                generation = store.verify(folder, manifest, checksums)
                return cls._read(folder, generation, manifest, runtime, mmap)
            except (CollectionError, FileNotFoundError, RuntimeError) as err:
                # a writer replaced the generation while it was being opened: read the new one
                if attempt == 2 or store.read_manifest(folder)["generation"] == manifest["generation"]:
                    if isinstance(err, RuntimeError):           # faiss could not read an index file
                        raise CollectionError(f"{folder / manifest['generation']}: the index cannot be read "
                                              f"({str(err).strip().splitlines()[-1]}); rebuild the collection "
                                              "with `cbir index build`") from None
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _read(cls, folder: Path, generation: Path, manifest: dict, runtime: Runtime, mmap: bool) -> "Collection":
        vectors = np.load(generation / VECTORS, mmap_mode="r" if mmap else None)
        spec = IndexSpec(**manifest["index"])
        index = read_index(generation, spec, vectors, mmap=mmap)
        labels = np.load(generation / "labels.npy", mmap_mode="r" if mmap else None)
        return cls(folder, manifest, vectors, Paths.read(generation, mmap), labels, index, runtime, mmap)

    # -- what it holds --------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.manifest["model"]

    def __len__(self) -> int:
        return int(self.manifest["n"])

    def label(self, i: int) -> str | None:
        code = int(self.labels[i])
        return self.manifest["label_names"][code] if code >= 0 else None

    def info(self) -> dict:
        """Model, size, index type, bytes per vector (index and features), creation and history."""
        generation = self.folder / self.manifest["generation"]
        files = self.manifest["files"]
        index_bytes = sum(files[name]["bytes"] for name in files
                          if name in ("index.faiss", "codes.faissb", "hasher.npz"))
        n = max(len(self), 1)
        return {"folder": str(self.folder), "model": self.model, "n": len(self), "dim": self.manifest["dim"],
                "index": IndexSpec(**self.manifest["index"]).describe(),
                "index_bytes_per_vector": index_bytes / n, "feature_bytes_per_vector": 4 * self.manifest["dim"],
                "bytes_on_disk": sum(f["bytes"] for f in files.values()),
                "labels": len(self.manifest["label_names"]), "text_search": self.manifest["text"] is not None,
                "source": self.manifest["source"], "created": self.manifest["created"],
                "history": self.manifest["history"], "generation": generation.name}

    # -- searching ------------------------------------------------------------------------
    @property
    def extractor(self):
        """The collection's model, built on first use (queries by image or text)."""
        if self._extractor is None:
            identity = self.manifest["identity"]
            options = dict(device=self.runtime.device, pretrained=identity.get("pretrained", True),
                           batch_size=self.runtime.batch_size, num_workers=self.runtime.num_workers)
            try:        # the collection's own arithmetic, so queries and added images match its features
                self._extractor = create_extractor(self.model, precision=identity.get("precision", "auto"), **options)
            except CbirError as err:
                warnings.warn(f"the collection was embedded in {identity.get('precision')} precision, which this "
                              f"device cannot run ({err}); queries are embedded in its default precision",
                              CbirWarning, stacklevel=2)
                self._extractor = create_extractor(self.model, **options)
        return self._extractor

    def embed_images(self, images: Sequence) -> tuple[np.ndarray, list[str | None]]:
        """``(vectors, errors)`` of query images; a failed image has a NaN row and its error message."""
        feats = self.extractor.extract(list(images), progress=False, desc="queries")
        errors: list[str | None] = [None] * len(images)
        for i, image, reason in feats.failures:
            errors[i] = f"{image}: {reason}"
        return feats.vectors, errors

    def search(self, images: Sequence | str | None = None, text: Sequence[str] | str | None = None,
               vectors=None, model: str | None = None, k: int = 10, threshold=None) -> list[QueryResult]:
        """Rank the collection for each query: ``images`` (paths or PIL images), ``text`` (CLIP models)
        or ``vectors`` embedded by ``model``.  ``threshold``: a saved threshold file (or its loaded
        rule): every item under it instead of the top ``k``.  Records ``timings_`` (``embed_ms``, ``search_ms``).
        """
        given = [name for name, value in (("images", images), ("text", text), ("vectors", vectors)) if value is not None]
        if len(given) != 1:
            raise CbirError(f"search() takes one of images=, text= or vectors=; got {', '.join(given) or 'none'}")
        if k < 1:
            raise CbirError(f"k={k} must be at least 1")
        t0 = time.perf_counter()
        queries, labels, errors = self._embed_queries(images, text, vectors, model)
        t1 = time.perf_counter()
        rule = _threshold_rule(threshold, self.model) if threshold is not None else None
        ok = [i for i, err in enumerate(errors) if err is None]
        out = [QueryResult(labels[i], error=errors[i]) for i in range(len(labels))]
        if ok:
            ranked = self._threshold_search(queries[ok], rule) if rule else self.index.search(queries[ok], k)
            for row, (scores, ids) in zip(ok, zip(*ranked)):
                out[row].results = [Hit(r + 1, self.paths[int(i)], float(s), self.label(int(i)), int(i))
                                    for r, (s, i) in enumerate(zip(scores, ids)) if i >= 0]
        self.timings_ = {"embed_ms": 1000 * (t1 - t0), "search_ms": 1000 * (time.perf_counter() - t1)}
        return out

    def _embed_queries(self, images, text, vectors, model) -> tuple[np.ndarray, list[str], list[str | None]]:
        if text is not None:
            from ..features.text import check_text_model, embed_text

            check_text_model(self.model)
            texts = [text] if isinstance(text, str) else list(text)
            return embed_text(self.extractor, texts), texts, [None] * len(texts)
        if images is not None:
            images = [images] if isinstance(images, (str, os.PathLike)) else list(images)
            vectors, errors = self.embed_images(images)
            return vectors, [describe(image) for image in images], errors
        if model is None:
            raise CbirError(f"vectors= needs model= naming the model that embedded them (this collection's is "
                            f"{self.model!r})")
        if model != self.model:
            raise CbirError(f"this collection was built with model {self.model!r}; vectors embedded by {model!r} "
                            "are in another feature space: embed the queries with the collection's model")
        vectors = as_float32_matrix(vectors, "vectors")
        if vectors.shape[1] != self.manifest["dim"]:
            raise CbirError(f"vectors have dimension {vectors.shape[1]} but the collection's {self.model} features "
                            f"have {self.manifest['dim']}")
        return vectors, [f"vector {i}" for i in range(len(vectors))], [None] * len(vectors)

    def _threshold_search(self, queries: np.ndarray, rule) -> tuple[list, list]:
        """Per query, every item with d = sqrt(2 - 2 s) under the rule's threshold for it (best first)."""
        all_scores, all_ids = [], []
        for q in queries:
            depth = min(max(64, 2 * getattr(rule, "n", 1)), len(self))
            while True:
                scores, ids = self.index.search(q[None, :], depth)
                scores, ids = scores[0][ids[0] >= 0], ids[0][ids[0] >= 0]
                if not len(ids):                                  # an IVF index that found nothing
                    break
                dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * scores.astype(np.float64)))
                limit = rule.thresholds(dist[None, :])[0, 0]
                # stop at the collection's end, past the threshold, or when the index found all it can
                if depth >= len(self) or dist[-1] >= limit or len(ids) < depth:
                    break
                depth = min(2 * depth, len(self))
            keep = dist < limit if len(ids) else np.zeros(0, dtype=bool)
            all_scores.append(scores[keep])
            all_ids.append(ids[keep])
        return all_scores, all_ids

    # -- adding ---------------------------------------------------------------------------
    def add(self, paths: Sequence, label: str | None = None) -> dict:
        """Embed images (files, or folders searched recursively) and append them; searchable at once.

        Images already in the collection (same content) and images that fail to load are left
        out and reported.  Returns ``{"added": [...], "duplicates": [...], "failed": [(path, reason)]}``.
        """
        files = _expand(paths)
        with store.write_lock(self.folder):
            fresh = Collection.open(self.folder, mmap=self.mmap, runtime=self.runtime)   # the newest, under the lock
            fresh._extractor = self._extractor
            known = set(read_fingerprints(fresh.folder / fresh.manifest["generation"]))
            prints = [fingerprint(f) for f in files]
            new = [i for i, fp in enumerate(prints) if fp not in known and fp not in prints[:i]]
            duplicates = [str(files[i]) for i in range(len(files)) if i not in set(new)]
            report = {"added": [], "duplicates": duplicates, "failed": []}
            if new:
                cache = FeatureCache(self.runtime.cache_dir)
                feats, _ = cache.get_or_extract(fresh.extractor, [files[i] for i in new], self.runtime.progress,
                                                desc="add")
                report["failed"] = [(str(image), reason) for _, image, reason in feats.failures]
                kept = [new[j] for j in range(len(new)) if feats.ok[j]]
                if kept:
                    fresh._append(np.asarray(feats.vectors)[feats.ok], [files[i] for i in kept],
                                  [prints[i] for i in kept], label)
                    report["added"] = [str(files[i]) for i in kept]
        extractor = fresh._extractor
        self.__dict__.update(Collection.open(self.folder, mmap=self.mmap, verify=False, runtime=self.runtime).__dict__)
        self._extractor = extractor
        return report

    def _append(self, vectors: np.ndarray, files: list[Path], prints: list[str], label: str | None) -> None:
        """Write the next generation: this one's items, then the new ones (call under the write lock)."""
        generation = self.folder / self.manifest["generation"]
        all_vectors = np.concatenate([np.asarray(self.vectors), vectors]).astype(np.float32)
        # a memory-mapped faiss index is read-only (adding to it aborts the process): add to a read copy
        index = read_index(generation, IndexSpec(**self.manifest["index"]), self.vectors) if self.mmap else self.index
        add_to_index(index, vectors, all_vectors)
        codes, names = label_codes([label] * len(files), self.manifest["label_names"])
        paths = list(self.paths) + [str(Path(f).resolve()) for f in files]
        manifest = {**self.manifest, "n": len(all_vectors), "label_names": names,
                    "history": self.manifest["history"] + [{"action": "add", "n": len(files),
                                                            "utc": _created()["utc"]}]}
        if len(all_vectors) > GROWTH_WARNING * manifest["trained_on"] and _trains(manifest["index"]):
            warnings.warn(f"the collection has grown to {len(all_vectors)} items from the {manifest['trained_on']} its "
                          "index was trained on; searches may lose recall: rebuild it with `cbir index build`",
                          CbirWarning, stacklevel=3)

        def write(folder: Path) -> None:
            np.save(folder / VECTORS, all_vectors)
            write_items(folder, paths, np.concatenate([np.asarray(self.labels), codes]),
                        read_fingerprints(generation) + prints)
            write_index(index, folder)

        store.publish(self.folder, write, manifest, self.manifest)


def _existing(out: Path, overwrite: bool) -> dict | None:
    """The manifest of the collection already in ``out`` (None if none); refuse to replace it unless asked."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise CbirError(f"out={str(out)!r} is a file; give a folder for the collection")
    if (out / store.MANIFEST).is_file():
        if not overwrite:
            raise CbirError(f"{out} already holds a collection; pass overwrite=True to replace it, or add images "
                            "to it (Collection.add, `cbir index add`)")
        return store.read_manifest(out)
    leftovers = {store.LOCK}
    others = [p.name for p in out.iterdir() if p.name not in leftovers and not p.name.startswith(store.TMP_PREFIX)]
    if others:
        raise CbirError(f"out={str(out)!r} is a folder with other files ({', '.join(sorted(others)[:3])}); "
                        "give an empty or new folder for the collection")
    return None


def _text_identity(model: str) -> dict | None:
    if parse_model(model).kind != "clip":
        return None
    from ..features.text import text_identity

    return text_identity(model)


def _trains(index: dict) -> bool:
    """Whether the index learned something from the first gallery (IVF cells, PQ codebooks, hash codes)."""
    return bool(index.get("hash")) or any(part in index["factory"] for part in ("IVF", "PQ"))


def _expand(paths: Sequence) -> list[Path]:
    """Image files of ``paths``: files as given, folders searched recursively; clear errors for the rest."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise CbirError(f"folder {p} holds no images; give image files or a folder of them")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise CbirError(f"{p} does not exist; give image files or folders")
    if not files:
        raise CbirError("no images given to add")
    return files


def _threshold_rule(threshold, model: str):
    """The rule of a threshold file (or a rule given directly), checked to belong to ``model``."""
    if isinstance(threshold, (str, os.PathLike)):
        rule, saved = load_threshold(threshold)
        if saved.get("model") != model:
            raise CbirError(f"threshold file {threshold} was calibrated on {saved.get('model')!r} features but the "
                            f"collection holds {model!r} features; calibrate one with `cbir evaluate --model {model} "
                            f"--threshold static --save-threshold FILE`")
        return rule
    return threshold
