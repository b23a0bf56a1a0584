"""Stage 1, datasets: the one object every dataset loader returns, and the data-root convention (notebook 00)."""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CbirError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class DatasetError(CbirError):
    """A dataset could not be loaded; the message names the file or argument and the fix."""


CHECKOUT = Path(__file__).resolve().parents[2]   # the repository, when cbir_kit runs from a clone


def default_root(root: str | os.PathLike | None = None) -> Path:
    """The data root, the same from any current folder (a notebook in ``notebooks/``, the CLI anywhere).

    ``root`` if given, else ``$CBIR_DATA``, else the repository's ``datasets/`` when cbir_kit runs from
    a clone (an editable install), else the user's data folder: ``$XDG_DATA_HOME/cbir_kit/datasets``
    (``~/.local/share``; ``%LOCALAPPDATA%`` on Windows, ``~/Library/Application Support`` on macOS).
    """
    if root is not None:
        return Path(root)
    if os.environ.get("CBIR_DATA"):
        return Path(os.environ["CBIR_DATA"])
    if (CHECKOUT / "datasets" / "README.md").is_file() and (CHECKOUT / "pyproject.toml").is_file():
        return CHECKOUT / "datasets"
    return user_data_dir() / "datasets"


def writable(folder: Path) -> Path:
    """``folder``, made if needed; a :class:`DatasetError` naming it and the fix when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise DatasetError(f"cannot write to the data folder {folder} ({err.strerror}); point root= or $CBIR_DATA "
                           "at a folder you can write to") from None
    return folder


def user_data_dir() -> Path:
    """Where cbir_kit keeps data for this user when there is no checkout (see :func:`default_root`)."""
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "cbir_kit"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "cbir_kit"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "cbir_kit"


@dataclass
class Dataset:
    """Queries and a gallery, as image references with labels.

    ``query`` / ``gallery`` hold image references (paths, or objects with ``open()``).
    Relevance is label equality (``query_labels[i] == gallery_labels[j]``) unless ``gnd``
    gives revisitop ground truth.  With ``leave_one_out`` the queries *are* the gallery
    (query ``i`` is gallery item ``i``) and a query never retrieves itself.
    """

    name: str
    query: list[Any]
    gallery: list[Any]
    query_labels: np.ndarray
    gallery_labels: np.ndarray
    leave_one_out: bool = False
    class_names: list[str] | None = None
    gnd: list[dict] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.query_labels = np.asarray(self.query_labels)
        self.gallery_labels = np.asarray(self.gallery_labels)
        if len(self.query) != len(self.query_labels):
            raise DatasetError(f"{self.name}: {len(self.query)} queries but {len(self.query_labels)} labels")
        if len(self.gallery) != len(self.gallery_labels):
            raise DatasetError(f"{self.name}: {len(self.gallery)} gallery images but {len(self.gallery_labels)} labels")
        if self.leave_one_out and len(self.query) != len(self.gallery):
            raise DatasetError(f"{self.name}: leave-one-out needs the queries to be the gallery")

    @property
    def n_queries(self) -> int:
        return len(self.query)

    @property
    def n_gallery(self) -> int:
        return len(self.gallery)

    def subset(self, query_keep: np.ndarray, gallery_keep: np.ndarray) -> "Dataset":
        """The dataset restricted to the kept queries and gallery items (boolean masks).

        Used to drop images that failed to decode.  For leave-one-out sets the two masks
        must be equal so that query ``i`` stays gallery item ``i``.
        """
        query_keep = np.asarray(query_keep, bool)
        gallery_keep = np.asarray(gallery_keep, bool)
        if self.leave_one_out and not np.array_equal(query_keep, gallery_keep):
            raise ValueError("leave-one-out subset needs identical query and gallery masks")
        if self.gnd is not None and not gallery_keep.all():
            raise DatasetError(f"{self.name}: gallery images failed to load; revisitop ground truth needs all of them")
        return Dataset(
            name=self.name,
            query=[q for q, keep in zip(self.query, query_keep) if keep],
            gallery=[g for g, keep in zip(self.gallery, gallery_keep) if keep],
            query_labels=self.query_labels[query_keep],
            gallery_labels=self.gallery_labels[gallery_keep],
            leave_one_out=self.leave_one_out,
            class_names=self.class_names,
            gnd=None if self.gnd is None else [g for g, keep in zip(self.gnd, query_keep) if keep],
            info=dict(self.info),
        )

    def n_relevant(self) -> np.ndarray:
        """Number of relevant gallery items per query (the query itself excluded)."""
        if self.gnd is not None:
            return np.array([len(g["ok"]) for g in self.gnd])
        labels, counts = np.unique(self.gallery_labels, return_counts=True)
        lookup = dict(zip(labels.tolist(), counts.tolist()))
        n = np.array([lookup.get(lab, 0) for lab in self.query_labels.tolist()])
        return n - 1 if self.leave_one_out else n

    def describe(self) -> str:
        kind = "leave-one-out" if self.leave_one_out else "query/gallery"
        n_classes = len(np.unique(self.gallery_labels))
        return (f"{self.name}: {self.n_queries} queries, {self.n_gallery} gallery images, "
                f"{n_classes} classes ({kind})")
