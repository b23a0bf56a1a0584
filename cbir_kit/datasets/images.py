"""Stage 1, datasets: opening images safely; every image the toolkit embeds goes through :func:`open_image` (notebook 01).

An *image reference* is either a path (``str`` / ``pathlib.Path``), an already decoded
``PIL.Image.Image``, or any object with an ``open() -> PIL.Image.Image`` method (used by
in-memory datasets such as CIFAR-100).  The result is always an RGB image with its EXIF
orientation applied, so greyscale, palette, RGBA, CMYK and 16-bit files all work.

A file that cannot be decoded raises :class:`ImageLoadError`, which names the file and the
reason; callers that process many images report and skip it instead of crashing.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import CbirError

ImageRef = Any  # str | Path | PIL.Image.Image | object with .open()


class ImageLoadError(CbirError):
    """An image could not be decoded; ``str(err)`` names the file and why."""

    def __init__(self, ref: ImageRef, reason: str):
        self.ref = ref
        self.reason = reason
        super().__init__(f"{describe(ref)}: {reason}")


def describe(ref: ImageRef) -> str:
    """A short human-readable name for an image reference (its path, when it has one)."""
    if isinstance(ref, (str, Path)):
        return str(ref)
    return getattr(ref, "name", None) or repr(ref)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit greyscale is rescaled, not clipped)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        arr = (arr * (255.0 / hi) if hi > 0 else arr).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def open_image(ref: ImageRef, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``ref`` into an RGB ``PIL.Image`` with EXIF orientation applied.

    ``draft_size`` lets JPEG decoding downscale by a power of two while decoding (PIL's
    ``draft``), never below the requested size, which is much faster for large photos.
    Raises :class:`ImageLoadError` (naming the file) for unreadable, truncated,
    non-image or decompression-bomb files.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(ref, Image.Image):
                img = ref
            elif hasattr(ref, "open") and not isinstance(ref, (str, Path)):
                img = ref.open()
            else:
                path = Path(ref)
                if not path.is_file():
                    raise ImageLoadError(ref, "file not found")
                if path.stat().st_size == 0:
                    raise ImageLoadError(ref, "empty file (0 bytes)")
                img = Image.open(path)
                if draft_size is not None and img.format == "JPEG":
                    img.draft("RGB", draft_size)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(ref, f"decompression bomb refused ({err})") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(ref, "not an image file PIL can identify") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(ref, f"cannot decode ({err})") from None


def fingerprint(ref: ImageRef) -> str:
    """A content hash of one image reference, used to key the feature cache.

    Files are hashed by their bytes (so moving a dataset keeps its cache); objects may
    provide a ``cache_key`` attribute; decoded PIL images are hashed by their pixels.
    """
    key = getattr(ref, "cache_key", None)
    if key is not None:
        return str(key)
    h = hashlib.blake2b(digest_size=16)
    if isinstance(ref, Image.Image):
        h.update(f"{ref.mode}{ref.size}".encode())
        h.update(ref.tobytes())
    else:
        try:
            with open(os.fspath(ref), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            h.update(f"missing:{ref}".encode())
    return h.hexdigest()
