"""The challenge's reference submission: efficientnet_lite0 features and exact inner-product search.

It is graded exactly like a student's submission (same sandbox, same machine, same session),
and its time is the unit of the speed score.  Images that fail to decode get a zero vector,
so they rank last instead of stopping the run.
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


def retrieve(query_paths: list[str], k: int) -> list[list[int]]:
    _, ids = _state["index"].search(_embed(query_paths), k)
    return ids.tolist()
