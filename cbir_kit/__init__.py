"""cbir_kit: a teaching toolkit for content-based image retrieval.

The pipeline: datasets -> features -> index -> ranked lists -> metrics + timings.
"""
import os

# OpenMP threads that spin while waiting for work (libgomp's default) steal the cores that the
# working threads need when the machine is shared or loaded: measured on a busy 2-core machine,
# one faiss IndexBinaryFlat query took 24 ms instead of 0.08 ms, and EfficientNet-Lite0 ran at
# 10 instead of 38 images/s.  Idle threads sleep instead; set OMP_WAIT_POLICY=ACTIVE to undo.
# This must happen before torch or faiss load their OpenMP runtimes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .datasets import Dataset, load  # noqa: E402
from .errors import CbirError  # noqa: E402
from .evaluate import EvalResult, evaluate  # noqa: E402
from .features import create_extractor  # noqa: E402

__version__ = "0.1.0"
__all__ = ["CbirError", "Dataset", "EvalResult", "create_extractor", "evaluate", "load"]
