"""Instructor side: text that comes from submissions (names, failure reasons), made safe for the instructor's tools.

* :func:`spreadsheet_safe`: a CSV cell a spreadsheet shows as text, never runs as a formula
  (a leading ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a ``'``), cut at ``limit``;
* :func:`plot_label`: a label matplotlib draws as given (``$`` would start mathtext, and an
  unparsable formula stops the whole plot), cut at 40 characters.
"""
from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
REASON_LIMIT = 500


def spreadsheet_safe(value, limit: int = REASON_LIMIT):
    """``value`` unchanged unless it is text: then cut at ``limit`` and prefixed with ``'`` if it starts a formula."""
    if not isinstance(value, str):
        return value
    value = value[:limit]
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def plot_label(name: str, limit: int = 40) -> str:
    """``name`` as plain text for a matplotlib label: ``$`` escaped, at most ``limit`` characters."""
    name = str(name)
    return (name[:limit - 1] + "…" if len(name) > limit else name).replace("$", r"\$")
