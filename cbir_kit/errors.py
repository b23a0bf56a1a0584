"""Ground floor: the errors the toolkit raises on purpose; each message names the file or argument and the fix.

The ``cbir`` command prints these as one clear line (no traceback); anything else is a bug.
"""


class CbirError(Exception):
    """Base class of every error cbir_kit raises for bad input or an unavailable resource."""


class ModelUnavailableError(CbirError):
    """Model weights could not be loaded (usually: no network to download them)."""


class CbirWarning(UserWarning):
    """An input cbir_kit adjusted to carry on; the message names it and what was done.

    For example a k larger than the gallery (clamped), a class of a single image (it cannot be
    scored), a symbolic link loop in a dataset folder (dropped).  ``cbir`` prints each as one line.
    """


class CollectionError(CbirError):
    """A collection folder is missing, not a collection, or does not match its manifest (the file is named)."""
