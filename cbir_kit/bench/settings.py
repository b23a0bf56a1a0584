"""Stage 6, timings: the grids of ``cbir bench search`` (notebooks 02 and 04), importable without numpy or faiss.

The ``cbir`` command shows them in its help; :mod:`.search` runs them.
"""

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
METHODS = ("flat", "ivf", "hnsw", "ivfpq", "itq64", "itq128")
NPROBE_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_GRID = (16, 32, 64, 128, 256, 512)
SHORTLIST_GRID = (20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)
HASH_FIT_SAMPLE = 100_000  # ITQ is fitted on at most this many gallery vectors (faiss subsamples k-means alike)
