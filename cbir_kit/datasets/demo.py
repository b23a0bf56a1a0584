"""Stage 1, datasets: embedded offline datasets, built from images that ship inside installed packages (notebook 00).

``demo``   Near-duplicate retrieval.  18 real photographs (scikit-image's sample images and
           scikit-learn's two sample photos).  Each photo gets six seeded edits — crop,
           horizontal flip, rotation, colour jitter, JPEG re-compression and blur.  The
           gallery holds every original plus three of its edits; the other three edits are
           the queries.  Relevant = made from the same source photo.
``digits`` scikit-learn's 1,797 handwritten digits (8x8, upscaled to 64x64 PNG), 10
           classes; a seeded class-stratified split puts 10 images per class in the
           queries and the rest in the gallery.  Relevant = same digit.

Both are written once into ``<root>/<name>/`` with a ``labels.csv`` manifest and reused.
Building is deterministic: the same seed gives byte-identical files on every machine.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from .base import Dataset, default_root, writable
from .manifest import load_csv, write_manifest

# Real photographs shipped in scikit-image's wheel (no download needed).
SKIMAGE_PHOTOS = [
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg",
]
SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]
EDITS = ["crop", "flip", "rotate", "jitter", "jpeg", "blur"]
MAX_SIDE = 384
DEMO_VERSION = 1


def _source_photos() -> list[tuple[str, Image.Image]]:
    import skimage
    from sklearn.datasets import load_sample_image

    skimage_dir = Path(skimage.__file__).parent / "data"
    photos = []
    for fname in SKIMAGE_PHOTOS:
        with Image.open(skimage_dir / fname) as img:
            photos.append((Path(fname).stem, img.convert("RGB")))
    for fname in SKLEARN_PHOTOS:
        photos.append((Path(fname).stem, Image.fromarray(load_sample_image(fname))))
    out = []
    for name, img in photos:
        img = img.convert("RGB")
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)
        out.append((name, img))
    return out


def apply_edit(img: Image.Image, edit: str, rng: np.random.Generator) -> Image.Image:
    """One seeded near-duplicate edit of ``img`` (parameters drawn from ``rng``)."""
    w, h = img.size
    if edit == "crop":
        frac = rng.uniform(0.6, 0.85)
        cw, ch = int(w * frac), int(h * frac)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x0, y0, x0 + cw, y0 + ch))
    if edit == "flip":
        return ImageOps.mirror(img)
    if edit == "rotate":
        angle = float(rng.uniform(8, 20) * rng.choice([-1, 1]))
        return img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
    if edit == "jitter":
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
        return ImageEnhance.Color(img).enhance(rng.uniform(0.5, 1.5))
    if edit == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(10, 25)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if edit == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.5, 3.0))))
    raise ValueError(f"unknown edit {edit!r}; choose from {EDITS}")


def _build_demo(folder: Path, seed: int) -> None:
    rows = []
    rng = np.random.default_rng(seed)
    for name, img in _source_photos():
        img.save(folder / f"{name}__original.png", compress_level=1)
        rows.append(("gallery", f"{name}__original.png", name))
        order = rng.permutation(len(EDITS))
        for rank, e in enumerate(order):
            edit = EDITS[e]
            fname = f"{name}__{edit}.png"
            apply_edit(img, edit, rng).save(folder / fname, compress_level=1)
            rows.append(("gallery" if rank < 3 else "query", fname, name))
    write_manifest(folder / "labels.csv", rows)


def _build_digits(folder: Path, seed: int) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    is_query = np.zeros(len(digits.target), bool)
    for c in range(10):
        members = np.flatnonzero(digits.target == c)
        is_query[rng.choice(members, size=10, replace=False)] = True
    rows = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        arr = (255 - pixels * (255.0 / 16.0)).round().astype(np.uint8)  # dark ink on white
        img = Image.fromarray(arr, mode="L").resize((64, 64), Image.Resampling.BILINEAR)
        fname = f"{i:04d}.png"
        img.save(folder / fname)
        rows.append(("query" if is_query[i] else "gallery", fname, str(label)))
    write_manifest(folder / "labels.csv", rows)


BUILDERS = {"demo": _build_demo, "digits": _build_digits}


def build(name: str, root: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """Build the embedded dataset ``name`` under ``root`` (once) and return its folder.

    The folder is written under a temporary name and renamed when complete, so an
    interrupted build never leaves a half-written dataset that later runs trust.
    """
    folder = default_root(root) / (name if seed == 0 else f"{name}-seed{seed}")
    stamp = folder / f".built-v{DEMO_VERSION}"
    if stamp.exists():
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=writable(folder.parent)))
    try:
        BUILDERS[name](tmp, seed)
        (tmp / stamp.name).write_text("complete\n")
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not stamp.exists():  # another process did not win the race: re-raise
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_demo(root=None, seed: int = 0) -> Dataset:
    ds = load_csv(build("demo", root, seed) / "labels.csv")
    ds.name = "demo"
    return ds


def load_digits(root=None, seed: int = 0) -> Dataset:
    ds = load_csv(build("digits", root, seed) / "labels.csv")
    ds.name = "digits"
    return ds
