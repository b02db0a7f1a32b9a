"""Registered model -> predictions: input table checks, the Predictor, the CSV consumer."""
