"""Score a challenge submission in this process, the way ``cbir grade challenge`` scores it.

For students: run the baseline and your ``submission.py`` on a labelled split of your own and
get the grader's numbers before you hand in (notebook 09, section 6)::

    from cbir_kit.grade.local import score_locally
    baseline, mine = score_locally("submission/submission.py", my_labelled_split)
    print(mine.metrics, mine.timings, mine.scores)

What is the same as the real grader (:mod:`cbir_kit.grade.challenge`): the staging under
neutral names in a seeded order, the ``k`` passed to ``retrieve`` (the gallery size under
``k = 0``), the ``warmup`` untimed and ``repeats`` timed calls of ``build`` and ``retrieve``
(median; the timed retrieve includes packing the answer, as in the sandbox), the answer check
(:func:`~cbir_kit.grade.challenge.check_packed`), the metrics
(:func:`~cbir_kit.grade.challenge.evaluate_answer`) and the score
(:func:`~cbir_kit.grade.challenge.rescore`, i.e. :func:`cbir_kit.grade.scoring.score`).
What differs: no sandbox and no fresh process (both modules run here, timed in-process), and
your split is not the hidden one, so the number is an estimate of the official score.
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ..errors import CbirError
from . import scoring
from .challenge import (
    BASELINE,
    BASELINE_NAME,
    DATA_DIR,
    Result,
    _Failure,
    answer_cap,
    check_packed,
    evaluate_answer,
    rescore,
    stage_dataset,
    staging_seed,
)
from .runner import pack_answer


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))   # helper modules beside the submission, as in the sandbox
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    for name in ("build", "retrieve"):
        if not callable(getattr(module, name, None)):
            raise _Failure(f"{path.name} defines no function {name}(); the challenge needs "
                           "build(gallery_paths) and retrieve(query_paths, k)")
    return module


def _run(student: str, path: Path, gallery: list[str], query: list[str], staged, cfg: dict) -> Result:
    result = Result(student)
    timing = cfg["timing"]
    try:
        module = _load_module(path, "submission")
        times: dict[str, list[float]] = {"build": [], "retrieve": []}
        k = answer_cap(cfg, len(gallery))
        packed = None
        for op in ("build", "retrieve"):
            for i in range(timing["warmup"] + timing["repeats"]):
                start = time.perf_counter()
                packed = module.build(gallery) if op == "build" else pack_answer(module.retrieve(query, k))
                if i >= timing["warmup"]:
                    times[op].append(time.perf_counter() - start)
        ids = check_packed(*packed, len(query), len(gallery), k)
        result.metrics = evaluate_answer(ids, staged)
        result.timings = {f"{op}_s": statistics.median(v) for op, v in times.items()}
        result.timings["retrieve_ms_per_query"] = 1000 * result.timings["retrieve_s"] / max(1, len(query))
    except _Failure as err:
        result.status, result.reason = "failed", str(err)
    except Exception as err:  # noqa: BLE001 - a student's bug is reported, not raised
        result.status, result.reason = "failed", f"{type(err).__name__}: {err}"
    return result


def score_locally(submission, ds, config=None, overrides: dict | None = None, baseline=None) -> list[Result]:
    """``[baseline_result, submission_result]`` for a labelled query/gallery dataset ``ds``.

    ``submission`` is the path of a module with ``build`` and ``retrieve``; ``config`` and
    ``overrides`` as in :func:`cbir_kit.grade.scoring.load_config`; ``baseline`` a module path
    (default: the grader's baseline).  Each result has ``metrics``, ``timings`` and ``scores``.
    """
    cfg = scoring.load_config(config, overrides)
    submission = Path(submission)
    baseline = Path(baseline) if baseline else BASELINE
    for path, what in ((submission, "submission"), (baseline, "baseline")):
        if not path.is_file():
            raise CbirError(f"{what} module {path} does not exist; write it first (build() and retrieve())")
    with tempfile.TemporaryDirectory(prefix="cbir-local-challenge-") as tmp:
        staged = stage_dataset(ds, Path(tmp) / "data", staging_seed(cfg["seed"]))
        host = lambda paths: [str(staged.folder) + p[len(DATA_DIR):] for p in paths]
        gallery, query = host(staged.gallery), host(staged.query)
        results = [_run(name, path, gallery, query, staged, cfg)
                   for name, path in ((BASELINE_NAME, baseline), (submission.stem, submission))]
    if results[0].status != "ok":
        raise CbirError(f"the baseline failed ({results[0].reason}); the speed score needs it")
    rescore(results, cfg)
    return results
