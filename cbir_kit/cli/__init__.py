"""The ``cbir`` command (:func:`main`); every sub-command is a module of this package."""
from .app import main

__all__ = ["main"]
