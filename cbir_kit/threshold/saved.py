"""Stage 5, threshold: a calibrated threshold saved to a file and applied to new queries (notebook 05).

``cbir evaluate --threshold static|dynamic --save-threshold FILE`` writes the threshold it
calibrated; ``cbir search DIR IMAGE --threshold FILE`` then returns every image closer than it
instead of a fixed k (the dynamic-threshold paper's use: one threshold, any number of results).
The file holds the rule's parameters (:meth:`StaticThreshold.params`, :meth:`DynamicThreshold.params`),
the distance they apply to (the Euclidean distance of L2-normalised features,
d = sqrt(2 - 2 cos)), the model whose features were calibrated, and the dataset.  A threshold
only means something for the features it was calibrated on, so applying it to a collection of
another model is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

from .._io import write_json
from ..errors import CbirError
from .rules import DynamicThreshold, StaticThreshold

DISTANCE = "Euclidean"


def save_threshold(path, params: dict, model: str, dataset: str) -> Path:
    """Write a calibrated threshold (``params`` of a fitted rule, with its ``distance``) to ``path``."""
    if params.get("distance", DISTANCE) != DISTANCE:
        raise CbirError(f"only a threshold on {DISTANCE} distances can be saved for new queries; this one is on "
                        f"{params['distance']} distances (drop rerank=)")
    rule = {key: params[key] for key in ("method", "T", "w", "n", "mu", "calibration_f1") if key in params}
    return write_json(path, {"threshold": rule, "distance": DISTANCE, "model": model, "dataset": dataset})


def load_threshold(path) -> tuple[StaticThreshold | DynamicThreshold, dict]:
    """``(rule, saved)``: the threshold rule in ``path`` and the whole saved record (model, dataset)."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        rule = saved["threshold"]
        if rule["method"] == "static":
            return StaticThreshold(float(rule["T"]), rule.get("calibration_f1")), saved
        if rule["method"] == "dynamic":
            return DynamicThreshold(float(rule["T"]), float(rule["w"]), int(rule["n"]), rule.get("mu"),
                                    rule.get("calibration_f1")), saved
        raise KeyError("method")
    except FileNotFoundError:
        raise CbirError(f"threshold file {path} does not exist; write one with `cbir evaluate --threshold static "
                        f"--save-threshold {path}`") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CbirError(f"{path} is not a saved threshold ({type(err).__name__}: {err}); write one with "
                        f"`cbir evaluate --threshold static --save-threshold {path}`") from None
