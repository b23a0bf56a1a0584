"""Collections: the items of a collection, each image's path, label and content hash, stored to be read lazily (notebook 02).

Paths are one per line in ``paths.txt`` with the byte offset of every line in
``paths.offsets.npy``; memory-mapped, the path of item i is read only when a search returns it,
so opening a collection of a million images reads no path at all.  Labels are int32 codes into
the manifest's ``label_names`` (-1: no label).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import CbirError

PATHS, OFFSETS, LABELS, FINGERPRINTS = "paths.txt", "paths.offsets.npy", "labels.npy", "fingerprints.txt"


class Paths:
    """The item paths of a collection, ``paths[i]`` decoded on demand from the bytes of ``paths.txt``."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self._data, self._offsets = data, offsets

    @classmethod
    def read(cls, folder: Path, mmap: bool) -> "Paths":
        size = (folder / PATHS).stat().st_size                      # numpy cannot map an empty file
        data = np.memmap(folder / PATHS, dtype=np.uint8, mode="r") if mmap and size else \
            np.fromfile(folder / PATHS, dtype=np.uint8)
        return cls(data, np.load(folder / OFFSETS, mmap_mode="r" if mmap else None))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return bytes(self._data[a:b - 1]).decode("utf-8")              # without the newline

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def write_items(folder: Path, paths: Sequence[str], labels: np.ndarray, fingerprints: Sequence[str]) -> None:
    """Write the item files of :mod:`this module <cbir_kit.collection.items>` into ``folder``."""
    bad = [p for p in paths if "\n" in p or "\r" in p]
    if bad:
        raise CbirError(f"image path {bad[0]!r} contains a line break; rename the file")
    lines = [(p + "\n").encode("utf-8") for p in paths]
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum([len(line) for line in lines], out=offsets[1:])
    (folder / PATHS).write_bytes(b"".join(lines))
    np.save(folder / OFFSETS, offsets)
    np.save(folder / LABELS, np.asarray(labels, dtype=np.int32))
    (folder / FINGERPRINTS).write_text("".join(f + "\n" for f in fingerprints), encoding="utf-8")


def read_fingerprints(folder: Path) -> list[str]:
    return (folder / FINGERPRINTS).read_text(encoding="utf-8").splitlines()


def label_codes(labels: Sequence, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """``(codes, names)``: each label's index in ``names`` (extended with new labels; None -> -1)."""
    names = list(names)
    where = {name: i for i, name in enumerate(names)}
    codes = np.full(len(labels), -1, dtype=np.int32)
    for i, label in enumerate(labels):
        if label is None or label == "":
            continue
        label = str(label)
        if label not in where:
            where[label] = len(names)
            names.append(label)
        codes[i] = where[label]
    return codes, names
