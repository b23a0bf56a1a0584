"""Stage 1, datasets: Corel-1K (Wang's "image.orig" set), 1,000 photos in 10 classes, the course layout (notebook 00).

Corel-1K (Wang's "image.orig" set): 1,000 photos, 10 classes of 100, in the CBIR course layout.

Expected at ``<root>/corel1k/`` in the query/gallery layout: ``query/`` (10 per class),
``gallery/`` (90 per class) and ``labels.csv`` (``split,path,label``, paths relative to that
folder); class sub-folders inside ``query/`` and ``gallery/`` work too (see
:mod:`cbir_kit.datasets.manifest`).  There is no stable official download, so the set is
placed by hand; ``fetch`` checks it and says where it belongs.
"""
from __future__ import annotations

from pathlib import Path

from .base import Dataset, DatasetError, default_root
from .manifest import is_query_gallery, load_query_gallery

HOW_TO = ("Corel-1K (Wang et al.) has no stable official download; copy the course's corel1k folder (query/, "
          "gallery/ and labels.csv with columns split,path,label) to {home}, or use folder:PATH / qg:PATH "
          "for a copy elsewhere.")


def fetch_corel1k(root=None, progress: bool = True) -> Path:
    """Check that Corel-1K has been placed at ``<root>/corel1k`` and return that folder.

    ``progress`` is unused (nothing is downloaded); it keeps the signature every fetcher has.
    """
    home = default_root(root) / "corel1k"
    if not is_query_gallery(home):
        raise DatasetError(f"Corel-1K is not at {home.resolve()}. " + HOW_TO.format(home=home.resolve()))
    return home


def load_corel1k(root=None, seed: int = 0) -> Dataset:
    """Corel-1K from ``<root>/corel1k`` (``seed`` is unused: the split ships with the set)."""
    ds = load_query_gallery(fetch_corel1k(root))
    ds.name = "corel1k"
    return ds
