"""The ``cbir`` command as ``python -m cbir_kit.cli``."""
import sys

from .app import main

sys.exit(main())
