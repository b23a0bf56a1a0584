"""The pipeline, walked once: ``evaluate()``, its optional stages and ``compare()`` (notebooks 01-03).

``evaluate()`` (:mod:`.job`) runs dataset -> features -> index ->
the optional stages (:mod:`.stages`, one small function per stage) -> metrics and timings;
``compare()`` (:mod:`.comparison`) runs several configurations on shared features; the course
profile (:mod:`.profile`) picks each notebook's data and sizes (notebooks 00-03)."""
from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "EvalResult": ".job", "evaluate": ".job", "compare": ".comparison", "Methods": ".stages",
})
