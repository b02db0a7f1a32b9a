"""Snapshot -> features + errors: matminer composition features (fast path), structure features, cache."""
