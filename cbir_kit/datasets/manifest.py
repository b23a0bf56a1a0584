"""Stage 1, datasets: generic layouts, ``csv:PATH`` manifests and ``folder:PATH`` class folders (notebook 00).

CSV manifest: columns ``split,path,label``; ``split`` is ``query`` or ``gallery``; paths
are relative to the CSV's folder (absolute paths are kept as they are).

Folder layout: one sub-folder per class, images inside (searched recursively).  Every
image queries all the others (leave-one-out).  A folder that holds both a ``query/`` and a
``gallery/`` folder is read as the query/gallery layout instead (detected automatically).

Query/gallery layout (``qg:PATH``, or ``folder:PATH`` when detected): ``PATH/query/`` and
``PATH/gallery/``.  Labels come from ``PATH/labels.csv`` when it exists -- either a full
``split,path,label`` manifest, or just ``path,label`` with the split read from the path's first
folder (``query/...`` or ``gallery/...``) -- and otherwise from class sub-folders
(``query/<class>/*``, ``gallery/<class>/*``).
"""
from __future__ import annotations

import csv
import errno
import os
import warnings
from pathlib import Path

import numpy as np

from .._io import atomic_path
from ..errors import CbirWarning
from .base import IMAGE_EXTENSIONS, Dataset, DatasetError

REQUIRED_COLUMNS = ("split", "path", "label")


def write_manifest(path: Path, rows) -> None:
    """Write ``(split, path, label)`` rows atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(REQUIRED_COLUMNS)
        writer.writerows(rows)


def load_csv(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """Load a ``split,path,label`` manifest; errors name the file, line and fix."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest {path} does not exist; pass csv:PATH to a file with columns split,path,label")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                f"manifest {path} lacks column(s) {', '.join(missing)}; its header is "
                f"{reader.fieldnames}. The first line must be: split,path,label")
        rows = list(reader)
    return _from_rows(rows, path, name)


def _from_rows(rows: list[dict], path: Path, name: str | None) -> Dataset:
    """A query/gallery :class:`Dataset` from manifest rows (dicts with split, path, label)."""
    base = path.parent
    split = {"query": ([], []), "gallery": ([], [])}
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        s = (row["split"] or "").strip().lower()
        if s not in split:
            raise DatasetError(f"{path}, line {line}: split is {row['split']!r}; it must be 'query' or 'gallery'")
        rel = (row["path"] or "").strip()
        if not rel:
            raise DatasetError(f"{path}, line {line}: empty path")
        key = f"{s}:{rel}"
        if key in seen:
            raise DatasetError(f"{path}, line {line}: duplicate {s} path {rel!r} (first on line {seen[key]}); remove one")
        seen[key] = line
        full = Path(rel) if os.path.isabs(rel) else base / rel
        split[s][0].append(str(full))
        split[s][1].append(row["label"])
    missing_files = [p for p in split["query"][0] + split["gallery"][0] if not os.path.exists(p)]
    if missing_files:
        shown = ", ".join(missing_files[:5]) + (" ..." if len(missing_files) > 5 else "")
        raise DatasetError(f"manifest {path} lists {len(missing_files)} missing file(s): {shown}. "
                           "Paths are relative to the CSV's folder.")
    if not split["gallery"][0]:
        raise DatasetError(f"manifest {path} has no gallery rows")
    if not split["query"][0]:
        raise DatasetError(f"manifest {path} has no query rows")
    return Dataset(
        name=name or f"csv:{path}",
        query=split["query"][0], gallery=split["gallery"][0],
        query_labels=np.array(split["query"][1], dtype=object),
        gallery_labels=np.array(split["gallery"][1], dtype=object),
        class_names=sorted(set(split["gallery"][1])),
        info={"manifest": str(path)},
    )


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _link_loop(path: Path, above: list[str]) -> bool:
    """Whether ``path`` is a symbolic link loop, warned about (:class:`CbirWarning`) when it is.

    A loop is a link that resolves to nothing but links (ELOOP), or to one of the folders
    ``above`` (the real paths of the folders being scanned, from the top down) or an ancestor
    of one: following it would scan the same images again, without end.
    """
    if not path.is_symlink():
        return False
    try:
        target = os.path.realpath(path, strict=True)
    except OSError as err:
        if err.errno != errno.ELOOP:
            return False
        target = "itself"
    else:
        inside = target.rstrip(os.sep) + os.sep
        if not any(folder == target or folder.startswith(inside) for folder in above):
            return False
    warnings.warn(f"skipping the symbolic link {path}: it loops back to {target}; remove it or point it "
                  "elsewhere", CbirWarning, stacklevel=3)
    return True


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted for determinism.

    Sub-folders are searched too, links to folders followed; a link loop is skipped with a
    warning (:func:`_link_loop`).
    """
    found = []
    above = {str(folder): [os.path.realpath(folder)]}  # folder -> real paths from the top down to it
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not _link_loop(Path(here, d), above[here])]
        for d in dirs:
            above[os.path.join(here, d)] = above[here] + [os.path.realpath(os.path.join(here, d))]
        for name in files:
            file = Path(here, name)
            if _is_image(file) and not _link_loop(file, []) and file.is_file():
                found.append(file)
    return sorted(found)


def _class_folders(path: Path) -> tuple[list[Path], list[str], list[str]]:
    """Class sub-folders of ``path`` with their images and labels; an empty class is an error."""
    top = [os.path.realpath(path)]
    classes = sorted(d for d in path.iterdir()
                     if not d.name.startswith(".") and not _link_loop(d, top) and d.is_dir())
    if not classes:
        raise DatasetError(f"folder {path} has no class sub-folders; put each class's images in its own sub-folder")
    images, labels = [], []
    for d in classes:
        found = list_images(d)
        if not found:
            raise DatasetError(f"class folder {d} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                               "add images or remove the folder")
        images += [str(p) for p in found]
        labels += [d.name] * len(found)
    return classes, images, labels


def is_query_gallery(path: str | os.PathLike) -> bool:
    """True when ``path`` holds both a ``query/`` and a ``gallery/`` folder."""
    path = Path(path)
    return (path / "query").is_dir() and (path / "gallery").is_dir()


def load_query_gallery(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """The query/gallery layout (see the module docstring)."""
    path = Path(path)
    if not is_query_gallery(path):
        raise DatasetError(f"{path} must contain a query/ and a gallery/ folder for the query/gallery layout")
    labels_csv = path / "labels.csv"
    if labels_csv.is_file():
        with open(labels_csv, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
        if "split" in columns:
            return load_csv(labels_csv, name=name or f"qg:{path}")
        if "path" not in columns or "label" not in columns:
            raise DatasetError(f"{labels_csv} needs columns path,label (or split,path,label); its header is {columns}")
        for line, row in enumerate(rows, start=2):
            top = (row["path"] or "").replace("\\", "/").split("/", 1)[0]
            if top not in ("query", "gallery"):
                raise DatasetError(f"{labels_csv}, line {line}: path {row['path']!r} is not inside query/ or "
                                   "gallery/; add a split column or fix the path")
            row["split"] = top
        ds = _from_rows(rows, labels_csv, name or f"qg:{path}")
        ds.info["manifest"] = str(labels_csv)
        return ds
    parts = {}
    for split in ("query", "gallery"):
        if list_images_flat(path / split):
            raise DatasetError(f"{path / split} holds images but no class sub-folders, and {labels_csv} is absent; "
                               "put the images in class sub-folders or add labels.csv with columns path,label")
        parts[split] = _class_folders(path / split)
    classes, query, q_labels = parts["query"]
    g_classes, gallery, g_labels = parts["gallery"]
    return Dataset(name=name or f"qg:{path}", query=query, gallery=gallery,
                   query_labels=np.array(q_labels, dtype=object), gallery_labels=np.array(g_labels, dtype=object),
                   class_names=sorted({d.name for d in classes + g_classes}), info={"folder": str(path)})


def list_images_flat(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (not in sub-folders)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def load_folder(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """One sub-folder per class, leave-one-out; a query/ + gallery/ folder pair is detected."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"folder {path} does not exist; pass folder:PATH to a folder with one sub-folder per class")
    if is_query_gallery(path):
        return load_query_gallery(path, name=name or f"folder:{path}")
    classes, images, labels = _class_folders(path)
    labels = np.array(labels, dtype=object)
    return Dataset(name=name or f"folder:{path}", query=list(images), gallery=images,
                   query_labels=labels, gallery_labels=labels.copy(), leave_one_out=True,
                   class_names=[d.name for d in classes], info={"folder": str(path)})


def read_hierarchy(hierarchy) -> dict:
    """A ``fine,coarse`` CSV (header optional) as a dict fine -> coarse."""
    path = Path(hierarchy)
    if not path.is_file():
        raise DatasetError(f"hierarchy={str(path)!r} does not exist; give a class hierarchy CSV with rows fine,coarse")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["fine", "coarse"]:
        rows = rows[1:]
    bad = [i for i, r in enumerate(rows, 1) if len(r) < 2]
    if bad or not rows:
        raise DatasetError(f"hierarchy={str(path)!r}: every row of a class hierarchy CSV must be fine,coarse "
                        f"(row {bad[0] if bad else 1})")
    return {r[0].strip(): r[1].strip() for r in rows}
