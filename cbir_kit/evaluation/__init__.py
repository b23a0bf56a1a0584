"""Stage 6, evaluation: numbers from rankings, pure numpy; imports no index (notebook 03).

:mod:`.metrics` holds every ranking and set metric with its formula; :mod:`.revisitop_map`
the Revisited Oxford/Paris protocol (easy / medium / hard, junk ignored).
"""
