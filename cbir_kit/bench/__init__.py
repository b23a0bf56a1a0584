"""Stage 6, timings: the timing harness (:mod:`.harness`, notebook 03), the extraction benchmark
(:mod:`.extract`, notebook 01) and the search benchmark with its feature synthesis
(:mod:`.search`, :mod:`.settings`, notebooks 02 and 04)."""
