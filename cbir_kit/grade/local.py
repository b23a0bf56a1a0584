"""Instructor side, for students: score a challenge submission on your own split, the way the grader does.

For students: run the baseline and your ``submission.py`` on a labelled split of your own and
get the grader's numbers before you hand in (notebook 09, section 6)::

    from cbir_kit.grade.local import score_locally
    baseline, mine = score_locally("submission/submission.py", my_labelled_split)
    print(mine.metrics, mine.timings, mine.scores)

It runs the grader's own code (:func:`cbir_kit.grade.challenge.grade_batch`), so everything is
the same: the staging under neutral names in a seeded order, the ``k`` passed to ``retrieve``
(the gallery size under ``k = 0``), the runs - each a fresh process that imports your module,
builds and retrieves, timed from outside with the import counted as build time, ``warmup``
untimed runs then timed runs until their spread is small - the query folder unreadable until
``retrieve``, the check of every run's answer, the metrics of the worst run, the noise band of
the speed-up and the score.  Your module's folder comes along, as ``<student>/`` does in the
grader: keep the submission in a folder of its own.

What differs: no sandbox.  Each run is a plain child process with what the grader's rlimits mode
gives it (a fresh working directory as cwd, ``$HOME``, ``$TMPDIR`` and ``$CBIR_CACHE``, host
paths) but no resource limits: those cannot be set inside an already confined process (a
grading kernel) nor on every system.  The grader's time-out, wall-time and output limits still
apply.  And your split is not the hidden one, nor your machine the grader's, so the number is
an estimate of the official score.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import CbirError
from . import scoring
from .challenge import BASELINE, BASELINE_NAME, Result, grade_batch, stage_dataset, staging_seed
from .sandbox import Limits, Sandbox, SandboxSpec


class _Unconfined(Sandbox):
    """The grader's runs as plain child processes: rlimits mode without the resource limits."""

    def __init__(self, limits: Limits):
        super().__init__(limits, "rlimits")
        self.note = "no sandbox: plain processes (local scoring)"
        self.groups = None

    def command(self, argv: list[str], spec: SandboxSpec, work_dir: Path) -> tuple[list[str], str, dict]:
        return self.host_command(argv, spec, work_dir)


def score_locally(submission, ds, config=None, overrides: dict | None = None, baseline=None) -> list[Result]:
    """``[baseline_result, submission_result]`` for a labelled query/gallery dataset ``ds``.

    ``submission`` is the path of a module with ``build`` and ``retrieve``; ``config`` and
    ``overrides`` as in :func:`cbir_kit.grade.scoring.load_config`; ``baseline`` a module path
    (default: the grader's baseline).  Each result has ``metrics``, ``timings`` and ``scores``.
    """
    cfg = scoring.load_config(config, overrides)
    submission = Path(submission).resolve()
    baseline = Path(baseline).resolve() if baseline else BASELINE
    for path, what in ((submission, "submission"), (baseline, "baseline")):
        if not path.is_file():
            raise CbirError(f"{what} module {path} does not exist; write it first (build() and retrieve())")
    sandbox = _Unconfined(Limits.from_dict(cfg["limits"]))
    with tempfile.TemporaryDirectory(prefix="cbir-local-challenge-") as tmp:
        staged = stage_dataset(ds, Path(tmp) / "data", staging_seed(cfg["seed"]))
        batch = [(BASELINE_NAME, baseline, False), (submission.stem, submission, True)]
        return grade_batch(batch, staged, sandbox, cfg, Path(tmp))
