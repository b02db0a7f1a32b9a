"""metalearn: few-shot materials property prediction (library layer: no Prefect, MLflow only in registry.py)."""
__version__ = "0.1.0"
