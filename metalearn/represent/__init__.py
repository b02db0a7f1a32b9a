"""Shards + features -> transfer representation: per-property LightGBM members whose predictions are the vector.

See :mod:`metalearn.represent.transfer` (the model), :mod:`metalearn.represent.rows` (what it
learns from, leakage control), :mod:`metalearn.represent.stage` (cache, formula -> vector) and
:mod:`metalearn.represent.vectors` (the vectors of a set of shards under their leakage rule).
"""
