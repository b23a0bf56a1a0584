"""Stage 1, datasets: Revisited Oxford 5k and Paris 6k and their easy/hard/junk ground truth (notebook 07).

Revisited Oxford 5k (``roxford5k``) and Paris 6k (``rparis6k``), as distributed by revisitop.

Layout under ``<root>/<name>/``: ``gnd_<name>.pkl`` (the ground truth) and ``jpg/<image>.jpg``
(all images in one flat folder).  The pickle holds ``imlist`` (database image names, no
extension), ``qimlist`` (the 70 query names) and ``gnd[i]`` for query ``i``: ``bbx`` (x0, y0,
x1, y1, the query's region), and database ids in ``easy``, ``hard`` and ``junk``.

The protocol crops every query to its ``bbx`` (``crop_queries=True``, the default).  Relevance
comes from the ground truth, not from labels: each ``Dataset.gnd`` entry holds ``easy``,
``hard``, ``junk``, ``bbx`` and ``ok`` = easy + hard, so ``ok`` / ``junk`` are the Medium
setting; :func:`gnd_for_setting` builds the ok/junk lists of Easy, Medium or Hard
(Easy: ok = easy, junk = junk + hard; Medium: ok = easy + hard, junk = junk; Hard: ok = hard,
junk = junk + easy).  Labels are landmark names read from the file names (``all_souls``,
``paris_defense``); they are for display only.

:func:`load_ground_truth` reads only the pickle (no images needed).
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import fingerprint, open_image
from .base import Dataset, DatasetError, default_root
from .download import download, extract_archive

GND_URL = "http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/gnd_{name}.pkl"
IMAGE_URLS = {
    "roxford5k": ["https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz"],
    "rparis6k": ["https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1-v1.tgz",
                 "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2-v1.tgz"],
}
SETTINGS = ("easy", "medium", "hard")
PAGE = "The revisitop page is http://cmp.felk.cvut.cz/revisitop/."
IMAGES_STAMP = ".images-complete"


def setting_lists(gnd_entry: dict, setting: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ok, junk)`` gallery ids of one query under ``setting`` (easy / medium / hard)."""
    easy = np.asarray(gnd_entry.get("easy", []), dtype=np.int64)
    hard = np.asarray(gnd_entry.get("hard", []), dtype=np.int64)
    junk = np.asarray(gnd_entry.get("junk", []), dtype=np.int64)
    if setting == "easy":
        return easy, np.concatenate([junk, hard])
    if setting == "medium":
        return np.concatenate([easy, hard]), junk
    if setting == "hard":
        return hard, np.concatenate([junk, easy])
    raise DatasetError(f"revisitop setting must be one of {SETTINGS}; got {setting!r}")


def load_gnd(path) -> dict:
    """Read a revisitop ``gnd_*.pkl`` file: ``{"imlist", "qimlist", "gnd"}``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"revisitop ground truth {path} does not exist; download gnd_roxford5k.pkl / "
                        "gnd_rparis6k.pkl from the revisitop site into that folder")
    with open(path, "rb") as f:
        data = pickle.load(f)
    if not isinstance(data, dict) or "gnd" not in data:
        raise DatasetError(f"{path} is not a revisitop ground-truth pickle (no 'gnd' key)")
    return data


class CroppedImage:
    """A query image cropped to its box on ``open()`` (box clipped to the image, rounded)."""

    __slots__ = ("path", "bbx", "name")

    def __init__(self, path: str | os.PathLike, bbx):
        self.path = str(path)
        self.bbx = tuple(float(v) for v in bbx)
        self.name = f"{self.path}[crop {', '.join(f'{v:g}' for v in self.bbx)}]"

    @property
    def cache_key(self) -> str:
        return f"{fingerprint(self.path)}:crop={self.bbx}"

    def open(self):
        img = open_image(self.path)
        x0, y0, x1, y1 = self.bbx
        w, h = img.size
        box = (max(0, round(x0)), max(0, round(y0)), min(w, round(x1)), min(h, round(y1)))
        return img.crop(box)

    def __repr__(self) -> str:
        return f"CroppedImage({self.name})"


@dataclass
class GroundTruth:
    """A revisitop ground-truth pickle: database names, query names, per-query lists."""

    name: str
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict]
    path: Path

    def counts(self) -> dict[str, int]:
        """Totals over all queries of the ``easy``, ``hard`` and ``junk`` ids."""
        return {key: int(sum(len(g[key]) for g in self.gnd)) for key in ("easy", "hard", "junk")}


def gnd_for_setting(gnd: list[dict], setting: str) -> list[dict]:
    """Per query ``{"ok", "junk", "bbx"}`` under ``setting`` (``easy``, ``medium`` or ``hard``)."""
    out = []
    for g in gnd:
        ok, junk = setting_lists(g, setting)
        out.append({"ok": ok, "junk": junk, "bbx": g.get("bbx")})
    return out


def _check_name(name: str) -> None:
    if name not in IMAGE_URLS:
        raise DatasetError(f"unknown revisitop dataset {name!r}; use one of {', '.join(IMAGE_URLS)}")


def load_ground_truth(name: str, root=None) -> GroundTruth:
    """Read ``<root>/<name>/gnd_<name>.pkl`` (no images needed)."""
    _check_name(name)
    path = default_root(root) / name / f"gnd_{name}.pkl"
    if not path.is_file():
        raise DatasetError(f"{name}: ground truth {path} is missing. Run `cbir datasets fetch {name}` or download "
                           f"{GND_URL.format(name=name)} and save it as {path.resolve()}. {PAGE}")
    data = load_gnd(path)
    missing = [k for k in ("imlist", "qimlist") if k not in data]
    if missing or len(data["gnd"]) != len(data["qimlist"]):
        raise DatasetError(f"{path} is not a revisitop ground-truth file (missing {missing} or a gnd/qimlist "
                           "length mismatch); delete it and fetch it again")
    return GroundTruth(name, list(data["imlist"]), list(data["qimlist"]), list(data["gnd"]), path)


def _landmark(image_name: str) -> str:
    return re.sub(r"_\d+$", "", image_name)


def load_revisitop(name: str, root=None, seed: int = 0, crop_queries: bool = True) -> Dataset:
    """The dataset with images (see the module docstring); ``seed`` is unused (the split is fixed)."""
    gt = load_ground_truth(name, root)
    jpg = gt.path.parent / "jpg"
    gallery = [str(jpg / f"{n}.jpg") for n in gt.imlist]
    query_paths = [str(jpg / f"{n}.jpg") for n in gt.qimlist]
    missing = [p for p in query_paths + gallery if not os.path.isfile(p)]
    if missing:
        urls = " and ".join(IMAGE_URLS[name])
        raise DatasetError(
            f"{name}: {len(missing)} of {len(gallery) + len(query_paths)} images are missing (first: {missing[0]}). "
            f"The ground truth is there, the images are not. Run `cbir datasets fetch {name}"
            f"{'' if root is None else f' --root {root}'}`, or download {urls}, "
            f"extract them and put every .jpg file directly in {jpg.resolve()}/. For the ground truth alone use "
            f"cbir_kit.datasets.revisitop.load_ground_truth({name!r}).")
    query = [CroppedImage(p, g["bbx"]) if crop_queries else p for p, g in zip(query_paths, gt.gnd)]
    gnd = [{"easy": np.asarray(g["easy"], np.int64), "hard": np.asarray(g["hard"], np.int64),
            "junk": np.asarray(g["junk"], np.int64), "bbx": g["bbx"],
            "ok": np.concatenate([np.asarray(g["easy"], np.int64), np.asarray(g["hard"], np.int64)])}
           for g in gt.gnd]
    return Dataset(
        name=name, query=query, gallery=gallery,
        query_labels=np.array([_landmark(n) for n in gt.qimlist], dtype=object),
        gallery_labels=np.array([_landmark(n) for n in gt.imlist], dtype=object),
        gnd=gnd, info={"ground_truth": str(gt.path), "crop_queries": crop_queries, "settings": SETTINGS,
                       "default_setting": "medium"},
    )


def fetch_revisitop(name: str, root=None, progress: bool = True, gnd_url: str | None = None,
                    image_urls: list[str] | None = None) -> Path:
    """Download the ground truth and the image archives; flatten the images into ``jpg/``.

    Each archive is downloaded safely (resumable), extracted into a temporary folder, and its
    ``.jpg`` files are moved into ``<root>/<name>/jpg/``; the archive is then deleted.  Stamp
    files mark each archive and then all images complete, so an interrupted fetch resumes
    where it stopped and a finished one does nothing.
    """
    _check_name(name)
    home = default_root(root) / name
    download(gnd_url or GND_URL.format(name=name), home / f"gnd_{name}.pkl", progress=progress, hint=PAGE)
    jpg = home / "jpg"
    if (home / IMAGES_STAMP).exists():
        return home
    jpg.mkdir(parents=True, exist_ok=True)
    for url in image_urls or IMAGE_URLS[name]:
        done = home / f".done-{url.rsplit('/', 1)[-1]}"
        if done.exists():  # moved into jpg/ by an earlier, interrupted run
            continue
        archive = download(url, home / url.rsplit("/", 1)[-1], progress=progress, hint=PAGE)
        unpack = home / ".unpack"
        shutil.rmtree(unpack, ignore_errors=True)
        try:
            extract_archive(archive, unpack)
            for path in sorted(unpack.rglob("*.jpg")):
                os.replace(path, jpg / path.name)
        finally:
            shutil.rmtree(unpack, ignore_errors=True)
        done.write_text("complete\n")
        archive.unlink()
    (home / IMAGES_STAMP).write_text("complete\n")
    return home


def load_roxford5k(root=None, seed: int = 0, crop_queries: bool = True) -> Dataset:
    return load_revisitop("roxford5k", root, seed, crop_queries)


def load_rparis6k(root=None, seed: int = 0, crop_queries: bool = True) -> Dataset:
    return load_revisitop("rparis6k", root, seed, crop_queries)


def fetch_roxford5k(root=None, progress: bool = True) -> Path:
    return fetch_revisitop("roxford5k", root, progress)


def fetch_rparis6k(root=None, progress: bool = True) -> Path:
    return fetch_revisitop("rparis6k", root, progress)
