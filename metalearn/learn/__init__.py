"""Shards -> trained learners: episode sampling, models, the meta-training loop and the learners."""
