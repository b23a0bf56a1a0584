"""Stage 1, datasets: Animals-10 (Kaggle ``alessiocorrado99/animals10``) with a fixed, seeded split (notebook 00).

The Kaggle archive unzips to ``raw-img/<italian class name>/<image>``; the folder names map to
English class names (:data:`ITALIAN_TO_ENGLISH`).  Files live in ``<root>/animals10/``.

Getting the images (:func:`fetch_animals10`), first match wins:

1. ``<root>/animals10/raw-img/`` already there (unzipped by hand) -> used as is;
2. ``<root>/animals10/animals10.zip`` placed by hand -> extracted safely;
3. otherwise the ``kaggle`` package downloads it, with the credentials its users already have
   (``~/.kaggle/kaggle.json``, ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``, or a Kaggle API token);
   without credentials the error lists the exact steps.

The split reproduces the course assignment's shape: ``n_query`` queries and ``n_gallery``
gallery images (default 1,000 and 10,000), class-stratified and balanced: each of the 10
classes gives ``n_query / 10`` queries and ``n_gallery / 10`` gallery images, disjoint.  For
each class (in sorted Italian-name order) the image paths relative to ``raw-img/`` are sorted
as strings, ``numpy.random.default_rng(seed)`` draws one permutation, the first images of the
permutation become queries and the next ones gallery images.  The split is written once to
``split-g<n_gallery>-q<n_query>-seed<seed>.csv`` (``split,path,label``) and reused as is, so
it never changes; the same files and seed give the same bytes (``info["manifest_sha256"]``)
on every machine.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

import numpy as np

from .base import Dataset, DatasetError, default_root
from .download import DownloadError, extract_archive
from .manifest import list_images, load_csv, write_manifest

KAGGLE_DATASET = "alessiocorrado99/animals10"
KAGGLE_PAGE = "https://www.kaggle.com/datasets/alessiocorrado99/animals10"
ZIP_NAME = "animals10.zip"
ITALIAN_TO_ENGLISH = {
    "cane": "dog", "cavallo": "horse", "elefante": "elephant", "farfalla": "butterfly", "gallina": "chicken",
    "gatto": "cat", "mucca": "cow", "pecora": "sheep", "ragno": "spider", "scoiattolo": "squirrel",
}


def kaggle_credentials() -> str | None:
    """Where the Kaggle credentials are (the places the ``kaggle`` package reads), or None."""
    env = os.environ
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "environment variables KAGGLE_USERNAME and KAGGLE_KEY"
    if env.get("KAGGLE_API_TOKEN"):
        return "environment variable KAGGLE_API_TOKEN"
    home = Path(os.path.expanduser("~"))
    if env.get("KAGGLE_CONFIG_DIR"):
        config_dirs = [Path(env["KAGGLE_CONFIG_DIR"])]
    else:
        config_dirs = [home / ".kaggle", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    candidates = [d / "kaggle.json" for d in config_dirs]
    candidates += [home / ".kaggle" / n for n in ("access_token", "access_token.txt", "credentials.json")]
    for path in candidates:
        if path.is_file():
            return str(path)
    return None


def missing_credentials_message(home: Path) -> str:
    json_path = Path(os.path.expanduser("~")) / ".kaggle" / "kaggle.json"
    return (
        f"Animals-10 is downloaded from Kaggle ({KAGGLE_DATASET}) and no Kaggle API credentials were found. "
        f"Either (1) sign in at https://www.kaggle.com, open Settings -> API -> 'Create New Token', save the "
        f"downloaded kaggle.json as {json_path} and run `chmod 600 {json_path}`; or (2) set the environment "
        "variables KAGGLE_USERNAME=<your Kaggle user name> and KAGGLE_KEY=<the key from kaggle.json>. Then run "
        f"`cbir datasets fetch animals10` again. Without the API: download the archive from {KAGGLE_PAGE} and "
        f"either save it as {home.resolve() / ZIP_NAME} or unzip it so that {home.resolve() / 'raw-img'}/cane/ "
        "exists.")


def find_raw_img(folder: str | os.PathLike) -> Path | None:
    """``folder`` itself or ``folder/raw-img`` when it holds Italian class folders, else None."""
    folder = Path(folder)
    for cand in (folder / "raw-img", folder):
        if cand.is_dir() and any((cand / it).is_dir() for it in ITALIAN_TO_ENGLISH):
            return cand
    return None


def _kaggle_download(home: Path, progress: bool) -> Path:
    """Download the archive zip with the ``kaggle`` package; its chatter goes to the error message."""
    if kaggle_credentials() is None:
        raise DownloadError(missing_credentials_message(home))
    home.mkdir(parents=True, exist_ok=True)
    chatter = io.StringIO()
    try:
        with contextlib.nullcontext() if progress else contextlib.redirect_stdout(chatter):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
            api.dataset_download_files(KAGGLE_DATASET, path=str(home), unzip=False, quiet=not progress)
    except (Exception, SystemExit) as err:  # kaggle exits or raises on auth and network failures
        said = " ".join(chatter.getvalue().split())[:300]
        raise DownloadError(f"the Kaggle download of {KAGGLE_DATASET} failed ({err!r}{'; ' + said if said else ''}). "
                            f"Check your network and credentials ({kaggle_credentials()}), or install by hand: "
                            f"download the archive from {KAGGLE_PAGE} and save it as {home.resolve() / ZIP_NAME}."
                            ) from None
    archive = home / ZIP_NAME
    if not archive.is_file():
        raise DownloadError(f"the Kaggle download of {KAGGLE_DATASET} finished but {archive} is missing; "
                            f"download it by hand from {KAGGLE_PAGE} and save it there")
    return archive


def fetch_animals10(root=None, progress: bool = True) -> Path:
    """Make sure ``<root>/animals10/raw-img`` exists (see the module docstring); return it."""
    home = default_root(root) / "animals10"
    found = find_raw_img(home)
    if found is not None:
        return found
    archive = home / ZIP_NAME
    if not archive.is_file():
        archive = _kaggle_download(home, progress)
    try:
        extract_archive(archive, home)
    except DatasetError as err:
        archive.unlink()
        raise DatasetError(f"{err}. The damaged archive was deleted; run the command again to download it") from None
    found = find_raw_img(home)
    if found is None:
        raise DatasetError(f"{archive} did not contain raw-img/<class>/ folders; it is not the Animals-10 archive")
    archive.unlink()  # extracted and checked: the images are what later runs use
    return found


def class_files(raw_img: Path) -> dict[str, list[str]]:
    """Italian class name -> sorted image paths relative to ``raw-img`` (POSIX separators)."""
    unknown = sorted(d.name for d in raw_img.iterdir()
                     if d.is_dir() and not d.name.startswith(".") and d.name not in ITALIAN_TO_ENGLISH)
    if unknown:
        raise DatasetError(f"{raw_img} has folder(s) {', '.join(unknown)} that are not Animals-10 classes "
                           f"({', '.join(sorted(ITALIAN_TO_ENGLISH))}); move them out")
    out = {}
    for italian in sorted(ITALIAN_TO_ENGLISH):
        folder = raw_img / italian
        if not folder.is_dir():
            raise DatasetError(f"class folder {folder} ({ITALIAN_TO_ENGLISH[italian]}) is missing; "
                               "the Animals-10 copy is incomplete")
        files = sorted(p.relative_to(raw_img).as_posix() for p in list_images(folder))
        if not files:
            raise DatasetError(f"class folder {folder} contains no images; the Animals-10 copy is incomplete")
        out[italian] = files
    return out


def split_rows(raw_img: Path, n_gallery: int = 10_000, n_query: int = 1_000,
               seed: int = 0) -> list[tuple[str, str, str]]:
    """The seeded, class-stratified ``(split, path, label)`` rows (see the module docstring).

    Paths are relative to ``raw_img``'s parent folder, where the manifest is written.
    """
    n_classes = len(ITALIAN_TO_ENGLISH)
    if n_query % n_classes or n_gallery % n_classes or n_query <= 0 or n_gallery <= 0:
        raise DatasetError(f"n_query ({n_query}) and n_gallery ({n_gallery}) must be positive multiples of "
                           f"{n_classes} (the split is balanced over the classes)")
    q_per, g_per = n_query // n_classes, n_gallery // n_classes
    rng = np.random.default_rng(seed)
    rows = []
    for italian, files in class_files(raw_img).items():
        if len(files) < q_per + g_per:
            raise DatasetError(f"class folder {raw_img / italian} has {len(files)} images; the split needs "
                               f"{q_per} queries + {g_per} gallery images per class")
        order = rng.permutation(len(files))
        label = ITALIAN_TO_ENGLISH[italian]
        rows += [("query", f"{raw_img.name}/{files[i]}", label) for i in sorted(order[:q_per])]
        rows += [("gallery", f"{raw_img.name}/{files[i]}", label) for i in sorted(order[q_per:q_per + g_per])]
    return rows


def load_animals10(root=None, seed: int = 0, n_gallery: int = 10_000, n_query: int = 1_000,
                   path: str | os.PathLike | None = None, progress: bool = True) -> Dataset:
    """Animals-10 with its fixed split; ``path`` points at a hand-placed ``raw-img`` (or its parent).

    The manifest is written next to ``raw-img`` on first use and read back afterwards;
    ``info`` carries ``manifest``, ``manifest_sha256`` and ``raw_img``.
    """
    if path is not None:
        raw_img = find_raw_img(path)
        if raw_img is None:
            raise DatasetError(f"{path} does not contain raw-img/<italian class>/ folders "
                               f"({', '.join(sorted(ITALIAN_TO_ENGLISH))})")
    else:
        raw_img = fetch_animals10(root, progress)
    manifest = raw_img.parent / f"split-g{n_gallery}-q{n_query}-seed{seed}.csv"
    if not manifest.is_file():
        write_manifest(manifest, split_rows(raw_img, n_gallery, n_query, seed))
    ds = load_csv(manifest, name="animals10")
    ds.class_names = sorted(ITALIAN_TO_ENGLISH.values())
    ds.info.update(raw_img=str(raw_img), seed=seed,
                   manifest_sha256=hashlib.sha256(manifest.read_bytes()).hexdigest())
    return ds
