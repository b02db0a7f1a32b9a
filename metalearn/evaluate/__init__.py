"""Learners -> scores, report and the promotion gate: the k-shot protocol on unseen tasks."""
