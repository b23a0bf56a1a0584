"""Stage 5, threshold: ranked lists -> retrieved sets (notebook 05).

A static threshold and the dynamic per-gallery threshold, and their calibration on a seeded
split of the queries (:mod:`.rules`).
"""
from .rules import DynamicThreshold, StaticThreshold, calibrate, calibration_split, gallery_means, retrieval_metrics

__all__ = ["DynamicThreshold", "StaticThreshold", "calibrate", "calibration_split", "gallery_means",
           "retrieval_metrics"]
