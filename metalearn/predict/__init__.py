"""Registered model -> predictions: table checks, the carried featurizer, the Predictor, the local model
and its cache, the CSV consumer. No mlflow in this package (registry.py resolves URIs on a cache miss)."""
