"""cbir_kit: a teaching toolkit for content-based image retrieval.

The pipeline: datasets -> features -> index -> ranked lists -> metrics + timings.
"""
from .datasets import Dataset, load
from .errors import CbirError
from .evaluate import EvalResult, evaluate
from .features import create_extractor

__version__ = "0.1.0"
__all__ = ["CbirError", "Dataset", "EvalResult", "create_extractor", "evaluate", "load"]
