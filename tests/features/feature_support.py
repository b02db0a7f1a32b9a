"""Shared test helpers of tests/features: tiny real snapshots on disk."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from metalearn.ingest.snapshot import RECORDS
from metalearn.io import hash_frame, write_manifest, write_parquet_atomic
from metalearn.schema import RECORDS_SCHEMA, Manifest


def records_frame(
    formulas: list[str], structures: list[str | None] | None = None, prefix: str = "r"
) -> pd.DataFrame:
    n = len(formulas)
    return pd.DataFrame(
        {
            "record_id": [f"{prefix}{i}" for i in range(n)],
            "dataset_id": "matbench_expt_gap",
            "material_id": None,
            "formula": formulas,
            "structure_json": structures if structures is not None else [None] * n,
            "target": [float(i) for i in range(n)],
            "orig_split": "all",
        }
    )


def make_snapshot(directory: Path, records: pd.DataFrame) -> Path:
    """A minimal snapshot: records.parquet (RECORDS_SCHEMA) + manifest.json with a content hash."""
    directory.mkdir(parents=True)
    write_parquet_atomic(directory / f"{RECORDS}.parquet", records, schema=RECORDS_SCHEMA)
    write_manifest(
        directory,
        Manifest(
            stage="raw",
            source="test",
            content_hash=hash_frame(records),
            n_rows=len(records),
            created=datetime.now(UTC).isoformat(),
        ),
    )
    return directory
