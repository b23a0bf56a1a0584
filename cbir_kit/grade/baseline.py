"""Instructor side: the challenge's reference submission, efficientnet_lite0 features and exact inner-product search.

It is graded exactly like a student's submission (same sandbox, same machine, same session),
and its time is the unit of the speed score.  Images that fail to decode get a zero vector,
so they rank last instead of stopping the run.

It uses no threshold: ``retrieve`` returns the top k of the exact ranking, i.e. under the default
``k = 0`` (k = the gallery size) the whole gallery ranked.  Its recall is therefore 1, its
precision the class share (F1 about 0.18 with ten balanced classes) and its mAP that of the
features: the reference for ranking quality, with room left above it for any system that also
chooses where to stop (a threshold, notebook 05).  The answer goes back as the NumPy array
``search`` returns, which the runner packs without a Python loop.
"""
import numpy as np

from cbir_kit.features import create_extractor
from cbir_kit.index import ExactIndex

_state: dict = {}


def _embed(paths: list[str]) -> np.ndarray:
    if "extractor" not in _state:
        _state["extractor"] = create_extractor("efficientnet_lite0", device="cpu")
    features = _state["extractor"].extract(paths, progress=False)
    return np.nan_to_num(features.vectors, nan=0.0)


def build(gallery_paths: list[str]) -> None:
    _state["index"] = ExactIndex("ip").fit(_embed(gallery_paths))


def retrieve(query_paths: list[str], k: int) -> np.ndarray:
    _, ids = _state["index"].search(_embed(query_paths), k)
    return ids
