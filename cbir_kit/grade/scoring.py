"""Instructor side: the challenge configuration (a TOML file the instructor edits) and the score formula.

Score of one submission (0 to 100; a failed submission scores 0)::

    quality = sum_m w_m * metric_m / sum_m w_m          metrics m in [score.quality], each in [0, 1],
                                                        of the submission's worst run
    T       = sum of the median times listed in [score] time ("build" = import + build, "retrieve")
    speedup = T_baseline / T                            > 1 means faster than the baseline;
              = 1 exactly when 1 / (1 + noise_band) <= T_baseline / T <= 1 + noise_band
    speed   = min(speedup, speed_cap) / speed_cap       in [0, 1]
    score   = 100 * (quality_weight * quality + speed_weight * speed) / (quality_weight + speed_weight)

Times move with machine load (the same baseline code once measured 0.80x against itself).  Two
defences: the grader keeps timing fresh runs while their times disagree (:func:`needs_another_run`,
``timing.max_spread`` and ``timing.max_repeats``), and the noise band ``score.noise_band``
(default 0.10) makes a speed-up that close to 1 (0.91 to 1.10 by default) count as exactly 1.

The protocol is thresholded retrieval (notebook 05): with ``k = 0`` (the default) a submission
returns, per query, a ranked list of *any* length from 0 to the gallery size - every gallery
image it judges relevant, best first - and ``retrieve`` receives ``k`` = the gallery size.
``k > 0`` caps every list at k results (a top-k challenge).  With a cap far below the number R
of relevant images per query, recall <= k / R and mAP <= k / R for every system (on Animals-10,
R ~ 1,000: k = 10 allows at most 0.01), so quality could not separate submissions.

The metrics (:mod:`cbir_kit.evaluation.metrics`, macro averages over queries of the list S the submission
returns, with ``Rel`` the R gallery images of the query's class): ``precision`` = |S ∩ Rel| / |S|
(0 for an empty list), ``recall`` = |S ∩ Rel| / R, ``f1`` = 2PR / (P + R) per query (0 when
P + R = 0), ``mAP`` = AP of the returned ranking, sum over relevant ranks r of P@r, divided by
*all* R relevant gallery images (an empty list scores 0).

Default quality weights f1 0.5 + mAP 0.5: the two reward different things.  A full ranking
gets the best mAP its features allow but F1 = 2c / (1 + c) for a class share c (about 0.18 with
ten balanced classes: precision 0.1, recall 1); a good threshold keeps precision and recall
both high, hence F1, but mAP falls with every relevant image it cuts.  A system wins quality
by ranking well *and* choosing where to stop.
"""
from __future__ import annotations

import copy
import math
import statistics
import tomllib
from pathlib import Path

from ..errors import CbirError
from .sandbox import MODES, Limits

BASELINE_NAME = "(baseline)"   # the reference submission's row in every table

QUALITY_METRICS = ("precision", "recall", "f1", "mAP")
TIME_PARTS = ("build", "retrieve")

DEFAULTS: dict = {
    "k": 0,
    "seed": "secret",   # a fresh secret per run (recorded in results.json); a number reproduces a run
    "sandbox": "auto",
    "threads": 0,
    "baseline": "",
    "timing": {"warmup": 1, "repeats": 3, "max_repeats": 7, "max_spread": 0.10,
               "build_timeout_s": 900.0, "retrieve_timeout_s": 300.0},
    "limits": {},
    "score": {"quality": {"f1": 0.5, "mAP": 0.5}, "quality_weight": 0.7, "speed_weight": 0.3,
              "speed_cap": 2.0, "noise_band": 0.10, "time": ["build", "retrieve"]},
}


def _merge(base: dict, extra: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if key not in base and where not in ("limits", "score.quality"):
            raise CbirError(f"unknown setting {where + '.' if where else ''}{key} in the challenge config; "
                            f"known: {', '.join(sorted(base))}")
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "quality":
            out[key] = _merge(base[key], value, f"{where}.{key}".strip("."))
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """The defaults above, updated by the TOML file at ``path`` and then by ``overrides``."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                cfg = _merge(cfg, tomllib.load(fh), "")
        except FileNotFoundError:
            raise CbirError(f"challenge config {path} does not exist; copy grading/challenge.toml and edit it") from None
        except tomllib.TOMLDecodeError as err:
            raise CbirError(f"challenge config {path} is not valid TOML: {err}") from None
    if overrides:
        cfg = _merge(cfg, overrides, "")
    check_config(cfg)
    return cfg


def check_config(cfg: dict) -> None:
    """Raise :class:`CbirError` naming the first setting that makes no sense."""
    seed = cfg["seed"]
    if seed != "secret" and not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise CbirError(f'seed must be "secret" (a fresh one per run) or a number >= 0 to reproduce a run; got {seed!r}')
    score = cfg["score"]
    bad = set(score["quality"]) - set(QUALITY_METRICS)
    if bad or not score["quality"]:
        raise CbirError(f"score.quality must weight some of {', '.join(QUALITY_METRICS)}; got {sorted(score['quality'])}")
    if any(w < 0 for w in score["quality"].values()) or sum(score["quality"].values()) <= 0:
        raise CbirError("score.quality weights must be >= 0 with a positive sum")
    if score["quality_weight"] < 0 or score["speed_weight"] < 0 or score["quality_weight"] + score["speed_weight"] <= 0:
        raise CbirError("score.quality_weight and score.speed_weight must be >= 0 with a positive sum")
    if score["speed_cap"] <= 0:
        raise CbirError(f"score.speed_cap must be > 0; got {score['speed_cap']}")
    if not _is_number(score["noise_band"]) or score["noise_band"] < 0:
        raise CbirError(f"score.noise_band must be a number >= 0 (0 = no band); got {score['noise_band']!r}")
    if not score["time"] or set(score["time"]) - set(TIME_PARTS):
        raise CbirError(f"score.time must list some of {TIME_PARTS}; got {score['time']}")
    if not isinstance(cfg["k"], int) or cfg["k"] < 0:
        raise CbirError(f"k must be an integer >= 0 (0 = no cap: thresholded retrieval); got {cfg['k']!r}")
    _check_timing(cfg["timing"])
    if cfg["sandbox"] not in MODES:
        raise CbirError(f"sandbox must be one of {', '.join(MODES)}; got {cfg['sandbox']!r}")
    Limits.from_dict(cfg["limits"])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_timing(timing: dict) -> None:
    if not _is_count(timing["warmup"], 0):
        raise CbirError(f"timing.warmup must be an integer >= 0 (untimed runs first); got {timing['warmup']!r}")
    if not _is_count(timing["repeats"], 1):
        raise CbirError(f"timing.repeats must be an integer >= 1 (timed runs); got {timing['repeats']!r}")
    if not _is_count(timing["max_repeats"], timing["repeats"]):
        raise CbirError(f"timing.max_repeats must be an integer >= timing.repeats ({timing['repeats']}); "
                        f"got {timing['max_repeats']!r}")
    if not _is_number(timing["max_spread"]) or timing["max_spread"] < 0:
        raise CbirError(f"timing.max_spread must be a number >= 0 ((max - min) / median of the timed runs); "
                        f"got {timing['max_spread']!r}")


def spread(times: list[float]) -> float:
    """``(max - min) / median`` of the timed runs' times; 0 for a single run (or a zero median)."""
    middle = statistics.median(times)
    return (max(times) - min(times)) / middle if middle > 0 else 0.0


def needs_another_run(times: list[float], timing: dict) -> bool:
    """Whether to time one more run after the runs that took ``times`` (T of each, in seconds).

    Yes while fewer than ``timing.repeats``; after that, yes while fewer than ``timing.max_repeats``
    and ``spread(times) > timing.max_spread``.  With ``repeats = 1`` the spread is 0: one run.
    """
    if len(times) < timing["repeats"]:
        return True
    return len(times) < timing["max_repeats"] and spread(times) > timing["max_spread"]


def quality(metrics: dict, cfg: dict) -> float:
    """Weighted mean of the configured metrics."""
    weights = cfg["score"]["quality"]
    return sum(w * metrics[m] for m, w in weights.items()) / sum(weights.values())


def total_time(timings: dict, cfg: dict) -> float:
    """T: the sum of the times named in ``score.time`` (``build_s`` includes the import)."""
    return sum(timings[f"{part}_s"] for part in cfg["score"]["time"])


def counted_speedup(speedup: float, band: float) -> float:
    """``speedup``, or exactly 1.0 when it lies in the noise band ``[1 / (1 + band), 1 + band]``."""
    return 1.0 if 1 / (1 + band) <= speedup <= 1 + band else speedup


def score(metrics: dict, timings: dict, baseline_timings: dict, cfg: dict) -> dict:
    """``quality``, ``speedup`` (as counted), ``measured_speedup``, ``speed`` and ``score`` (formula above)."""
    s = cfg["score"]
    q = quality(metrics, cfg)
    t = total_time(timings, cfg)
    measured = total_time(baseline_timings, cfg) / t if t > 0 else math.inf
    speedup = counted_speedup(measured, s["noise_band"])
    speed = min(speedup, s["speed_cap"]) / s["speed_cap"]
    value = 100.0 * (s["quality_weight"] * q + s["speed_weight"] * speed) / (s["quality_weight"] + s["speed_weight"])
    return {"quality": q, "speedup": speedup, "measured_speedup": measured, "speed": speed, "score": value}
