"""Stage 1, datasets: CIFAR-100 (python version), downloaded, verified, served from the arrays (notebooks 00, 04).

CIFAR-100 (python version): download, verify, extract, and serve images from the arrays.

The official archive ``cifar-100-python.tar.gz`` (MD5 ``eb9058c3a382ffc7106e4002c42a8d85``)
holds three pickles in ``cifar-100-python/``: ``train`` (50,000 images) and ``test``
(10,000), each a dict with ``b'data'`` (N x 3072 uint8: the 1,024 red, then green, then blue
values of a 32x32 image, row-major), ``b'fine_labels'`` (0..99) and ``b'coarse_labels'``
(0..19); ``meta`` holds ``b'fine_label_names'`` and ``b'coarse_label_names'``.

Images are never written out as loose files: :class:`CifarImage` decodes one row of the
array into a ``PIL.Image`` on ``open()`` and carries a ``cache_key`` for the feature cache.

Each of the 100 fine classes belongs to exactly one of 20 superclasses; ``fine_to_coarse``
(an array indexed by fine label) is that hierarchy, used by hierarchical metrics.

Retrieval protocols (``load_cifar100(protocol=...)``):

* ``"train-test"`` (default): the gallery is the 50,000 training images; the queries are a
  seeded class-stratified sample of ``queries_per_class`` test images per fine class
  (default 10, so 1,000 queries).
* ``"test"``: the binary-hash course project's protocol: the 10,000 test images query the
  test set itself, leave-one-out (a query never retrieves itself).

The chosen split is written once as a manifest ``split,path,label`` (paths like
``test/00042``) and reused, so it never changes; ``info["manifest_sha256"]`` is its hash,
equal on every machine for the same seed.
"""
from __future__ import annotations

import csv
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .base import Dataset, DatasetError, default_root
from .download import download, extract_archive
from .manifest import write_manifest

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
PAGE = "The dataset page is https://www.cs.toronto.edu/~kriz/cifar.html."
PROTOCOLS = ("train-test", "test")


class CifarImage:
    """One CIFAR image, decoded from its split's array on ``open()``.

    ``cache_key`` identifies the pixels: the archive's MD5, the split and the row index.
    """

    __slots__ = ("split", "index", "cache_key", "name")

    def __init__(self, split: "CifarSplit", index: int):
        self.split = split
        self.index = int(index)
        self.cache_key = f"cifar100:{split.source}:{split.name}:{self.index}"
        self.name = f"cifar100/{split.name}/{self.index:05d}"

    def open(self) -> Image.Image:
        """The 32x32 RGB image: row -> (3, 32, 32) planes -> (32, 32, 3) pixels."""
        return Image.fromarray(self.split.data[self.index].reshape(3, 32, 32).transpose(1, 2, 0), mode="RGB")

    def __repr__(self) -> str:
        return f"CifarImage({self.name})"


@dataclass
class CifarSplit:
    """One split: ``data`` (N, 3072) uint8, ``fine_labels`` and ``coarse_labels`` (N,) int."""

    name: str
    data: np.ndarray
    fine_labels: np.ndarray
    coarse_labels: np.ndarray
    source: str  # the archive's MD5, part of every image's cache key

    def __len__(self) -> int:
        return len(self.fine_labels)

    def image(self, i: int) -> CifarImage:
        return CifarImage(self, i)

    def images(self) -> list[CifarImage]:
        return [CifarImage(self, i) for i in range(len(self))]


@dataclass
class Cifar100:
    """The extracted archive: ``train`` / ``test`` splits, label names and the hierarchy."""

    train: CifarSplit
    test: CifarSplit
    fine_label_names: list[str]
    coarse_label_names: list[str]
    fine_to_coarse: np.ndarray  # (100,) superclass of each fine label

    def coarse_of(self) -> dict[str, str]:
        """Fine class name -> superclass name (the form hierarchical metrics accept)."""
        return {f: self.coarse_label_names[c] for f, c in zip(self.fine_label_names, self.fine_to_coarse)}


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; delete {path.parent} and run `cbir datasets fetch cifar100` again")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _hierarchy(*splits: CifarSplit, n_fine: int) -> np.ndarray:
    """``fine_to_coarse[f]``: the one superclass every image of fine class ``f`` carries."""
    fine = np.concatenate([s.fine_labels for s in splits])
    coarse = np.concatenate([s.coarse_labels for s in splits])
    out = np.full(n_fine, -1, dtype=np.int64)
    for f in range(n_fine):
        seen = np.unique(coarse[fine == f])
        if len(seen) != 1:
            raise DatasetError(f"CIFAR-100 fine class {f} has superclasses {seen.tolist()}; the archive is damaged")
        out[f] = seen[0]
    return out


def read_extracted(folder: str | os.PathLike, source: str = MD5) -> Cifar100:
    """Read an extracted ``cifar-100-python`` folder (its ``train``, ``test`` and ``meta``)."""
    folder = Path(folder)
    meta = _unpickle(folder / "meta")
    splits = {}
    for name in ("train", "test"):
        d = _unpickle(folder / name)
        try:
            data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3072)
            fine = np.asarray(d[b"fine_labels"], dtype=np.int64)
            coarse = np.asarray(d[b"coarse_labels"], dtype=np.int64)
        except (KeyError, ValueError) as err:
            raise DatasetError(f"{folder / name} is not a CIFAR-100 python pickle ({err})") from None
        if not len(data) == len(fine) == len(coarse):
            raise DatasetError(f"{folder / name}: {len(data)} images but {len(fine)} / {len(coarse)} labels")
        splits[name] = CifarSplit(name, data, fine, coarse, source)
    fine_names = [n.decode() for n in meta[b"fine_label_names"]]
    coarse_names = [n.decode() for n in meta[b"coarse_label_names"]]
    return Cifar100(splits["train"], splits["test"], fine_names, coarse_names,
                    _hierarchy(splits["train"], splits["test"], n_fine=len(fine_names)))


def fetch_cifar100(root=None, url: str = URL, md5: str = MD5, progress: bool = True) -> Path:
    """Download (once), verify the MD5 of, and extract the archive; return the extracted folder.

    Files live in ``<root>/cifar100/``: the archive and ``cifar-100-python/``.  A stamp file
    records which verified archive was extracted, so a damaged or different archive is
    extracted again.
    """
    home = default_root(root) / "cifar100"
    folder = home / FOLDER
    stamp = home / f".extracted-{md5}"
    if stamp.exists() and folder.is_dir():
        return folder
    archive = download(url, home / ARCHIVE, md5=md5, progress=progress, hint=PAGE)
    for old in home.glob(".extracted-*"):
        old.unlink()
    extract_archive(archive, home)
    if not folder.is_dir():
        raise DatasetError(f"{archive} does not contain a {FOLDER}/ folder; it is not the CIFAR-100 python archive")
    stamp.write_text("complete\n")
    return folder


def _query_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Seeded class-stratified sample: ``per_class`` row ids of each class, classes in order."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if per_class > len(members):
            raise DatasetError(f"CIFAR-100 class {c} has {len(members)} test images; "
                               f"queries_per_class={per_class} is too many")
        picked.append(np.sort(rng.choice(members, size=per_class, replace=False)))
    return np.concatenate(picked)


def _split_rows(cifar: Cifar100, protocol: str, queries_per_class: int, seed: int) -> list[tuple[str, str, str]]:
    names = cifar.fine_label_names
    if protocol == "test":
        return [("gallery", f"test/{i:05d}", names[f]) for i, f in enumerate(cifar.test.fine_labels)]
    rows = [("query", f"test/{i:05d}", names[cifar.test.fine_labels[i]])
            for i in _query_rows(cifar.test.fine_labels, queries_per_class, seed)]
    rows += [("gallery", f"train/{i:05d}", names[f]) for i, f in enumerate(cifar.train.fine_labels)]
    return rows


def split_manifest(root=None, protocol: str = "train-test", queries_per_class: int = 10, seed: int = 0,
                   cifar: Cifar100 | None = None, folder: Path | None = None) -> Path:
    """The split manifest for ``protocol`` and ``seed`` (written once, then reused as is)."""
    if protocol not in PROTOCOLS:
        raise DatasetError(f"CIFAR-100 protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    home = Path(folder).parent if folder is not None else default_root(root) / "cifar100"
    tag = "test-loo" if protocol == "test" else f"train-test-q{queries_per_class}-seed{seed}"
    path = home / f"split-{tag}.csv"
    if not path.is_file():
        cifar = cifar or read_extracted(home / FOLDER)
        write_manifest(path, _split_rows(cifar, protocol, queries_per_class, seed))
    return path


def _read_manifest(path: Path, cifar: Cifar100) -> tuple[list, list, list, list]:
    splits = {"train": cifar.train, "test": cifar.test}
    query, q_labels, gallery, g_labels = [], [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            split_name, _, index = row["path"].partition("/")
            if split_name not in splits or not index.isdigit() or int(index) >= len(splits[split_name]):
                raise DatasetError(f"{path}, line {line}: bad image reference {row['path']!r}; delete the file "
                                   "to rebuild the split")
            ref = splits[split_name].image(int(index))
            if row["split"] == "query":
                query.append(ref)
                q_labels.append(row["label"])
            else:
                gallery.append(ref)
                g_labels.append(row["label"])
    return query, q_labels, gallery, g_labels


def load_cifar100(root=None, seed: int = 0, protocol: str = "train-test", queries_per_class: int = 10,
                  url: str = URL, md5: str = MD5, progress: bool = True) -> Dataset:
    """CIFAR-100 as a :class:`Dataset` (downloaded on first use; see the module docstring).

    Labels are fine class names.  ``info`` carries ``cifar`` (the :class:`Cifar100` object with
    both splits), ``coarse_of`` (fine name -> superclass name), ``fine_to_coarse``,
    ``manifest`` and ``manifest_sha256``.
    """
    folder = fetch_cifar100(root, url=url, md5=md5, progress=progress)
    cifar = read_extracted(folder, source=md5)
    manifest = split_manifest(protocol=protocol, queries_per_class=queries_per_class, seed=seed,
                              cifar=cifar, folder=folder)
    query, q_labels, gallery, g_labels = _read_manifest(manifest, cifar)
    if protocol == "test":
        query, q_labels = list(gallery), list(g_labels)
    return Dataset(
        name="cifar100", query=query, gallery=gallery,
        query_labels=np.array(q_labels, dtype=object), gallery_labels=np.array(g_labels, dtype=object),
        leave_one_out=protocol == "test", class_names=list(cifar.fine_label_names),
        info={"cifar": cifar, "coarse_of": cifar.coarse_of(), "fine_to_coarse": cifar.fine_to_coarse,
              "coarse_label_names": cifar.coarse_label_names, "protocol": protocol, "seed": seed,
              "manifest": str(manifest), "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()},
    )
