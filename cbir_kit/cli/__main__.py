"""``python -m cbir_kit.cli``: the ``cbir`` command."""
import sys

from .app import main

sys.exit(main())
