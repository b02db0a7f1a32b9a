"""Column names, pyarrow schemas and the Manifest: the one place on-disk layouts are defined.

Every stage writes Parquet tables whose columns are named here, plus a ``manifest.json``
(a :class:`Manifest`) saying what went in, what came out, and the content hash that keys it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

# --- raw snapshot: records.parquet (long format, one row per material x property) ---
RECORD_ID = "record_id"  # unique within a snapshot, stable across re-ingests of the same input
DATASET_ID = "dataset_id"  # one property from one source, e.g. "aflow__Egap", "mp_summary:band_gap_ev"
MATERIAL_ID = "material_id"  # source id where the source has one ("mp-149", OC20 system id), else null
FORMULA = "formula"  # as the source wrote it; parsed with pymatgen downstream
STRUCTURE_JSON = "structure_json"  # pymatgen Structure.as_dict() as JSON text, never pickled; null if none
TARGET = "target"  # float64, in the property's unit (see properties.parquet)
ORIG_SPLIT = "orig_split"  # the source's own split label, informational only

RECORDS_SCHEMA = pa.schema(
    [
        pa.field(RECORD_ID, pa.string(), nullable=False),
        pa.field(DATASET_ID, pa.string(), nullable=False),
        pa.field(MATERIAL_ID, pa.string()),
        pa.field(FORMULA, pa.string(), nullable=False),
        pa.field(STRUCTURE_JSON, pa.string()),
        pa.field(TARGET, pa.float64(), nullable=False),
        pa.field(ORIG_SPLIT, pa.string()),
    ]
)

# --- raw snapshot: properties.parquet (one row per dataset_id) ---
PROPERTY = "property"  # human description, e.g. "band gap (AFLOW, PBE)"
PROPERTY_KEY = "property_key"  # unit-named key, e.g. "band_gap_ev"
UNIT = "unit"
TASK_TYPE = "task_type"  # "regression" | "classification"
SOURCE_DB = "source_db"
FAMILY = "family"  # physical property family: all sources of "band gap" share one family
TRANSFORM = "transform"  # "none" | "log10": applied to targets before learning

PROPERTIES_SCHEMA = pa.schema(
    [
        pa.field(DATASET_ID, pa.string(), nullable=False),
        pa.field(PROPERTY, pa.string(), nullable=False),
        pa.field(PROPERTY_KEY, pa.string(), nullable=False),
        pa.field(UNIT, pa.string(), nullable=False),
        pa.field(TASK_TYPE, pa.string(), nullable=False),
        pa.field(SOURCE_DB, pa.string(), nullable=False),
        pa.field(FAMILY, pa.string(), nullable=False),
        pa.field(TRANSFORM, pa.string(), nullable=False),
    ]
)

TASK_TYPES = ("regression", "classification")
TRANSFORMS = ("none", "log10")

# --- quarantine.parquet: bad input kept with its reason, never dropped silently ---
REASON = "reason"  # short machine code, e.g. "unparseable_formula", "nonfinite_target"
DETAIL = "detail"  # human-readable explanation
RAW = "raw"  # the offending input as JSON text, so nothing is lost

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field(RECORD_ID, pa.string(), nullable=False),
        pa.field(DATASET_ID, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(DETAIL, pa.string(), nullable=False),
        pa.field(RAW, pa.string(), nullable=False),
    ]
)

QUARANTINE_REASONS = (
    "unparseable_formula",
    "unknown_element",
    "nonfinite_target",
    "bad_structure",
    "conflicting_duplicate",
    "invalid_label",
)

# --- features ---
MATERIAL_KEY = "material_key"  # content hash of (formula, structure_json): the feature-cache key


@dataclass(frozen=True)
class Manifest:
    """What a stage wrote: enough to reproduce it and to key its cache.

    ``content_hash`` hashes the data itself (not timestamps), so an identical re-run is detected.
    """

    stage: str  # "raw" | "features" | "shards" | ...
    source: str  # "bundled" | "mp" | "oc" | upstream id for later stages
    content_hash: str
    n_rows: int
    created: str  # ISO-8601 UTC
    inputs: dict[str, str] = field(default_factory=dict)  # upstream name -> content hash
    query: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    database_version: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls(**json.loads(text))


# --- features stage: features/<feature set>/<snapshot hash[:16]>[-nostruct]/ ---
FEATURES_FILE = "features.parquet"  # material_key, formula, feature columns (float64)
FEATURE_ERRORS_FILE = "errors.parquet"  # ERROR_COLUMNS: every material that could not be featurized
RECORD_KEYS_FILE = "record_keys.parquet"  # record_id, material_key: joins a snapshot's records to features
ERROR_COLUMNS = [MATERIAL_KEY, FORMULA, REASON, DETAIL]  # errors.parquet

# --- shards stage: shards/<snapshot id>/<feature set>/<config key>/ ---
TASK_ID = "task_id"  # "<dataset_id>|<group>"
TASK_KEY = "task_key"  # filesystem-safe task id ("t0007"), the partition key of data/
GROUP = "group"  # chemistry group (metalearn.chemistry.GROUPS) or "all"
SPLIT = "split"  # one of SPLITS
N_ROWS = "n_rows"
REDUCED_FORMULA = "reduced_formula"
Y = "y"  # transformed target used for learning
Y_RAW = "y_raw"  # target in the property's unit
FEATURE = "feature"  # feature_stats.parquet: feature, mean, std (meta-train tasks only)
MEAN = "mean"
STD = "std"

SPLITS = ("meta-train", "meta-val", "meta-test-property", "meta-test-chemistry")
META_TRAIN, META_VAL, META_TEST_PROPERTY, META_TEST_CHEMISTRY = SPLITS
META_TEST_SPLITS = (META_TEST_PROPERTY, META_TEST_CHEMISTRY)

TASKS_FILE = "tasks.parquet"  # the tasks index: one row per task
FEATURE_STATS_FILE = "feature_stats.parquet"
EXCLUDED_FILE = "excluded.parquet"  # record_id, dataset_id, reason: every record left out of a task
TASK_DATA_DIR = "data"  # task rows, Parquet partitioned by task_key (hive)
EXCLUDED_REASONS = (
    "duplicate_material_merged",
    "nonpositive_for_log10",
    "task_too_small",
    "over_task_row_cap",
    "held_out_chemistry",
    "featurization_failed",
)
TASK_ROW_COLUMNS = [TASK_KEY, TASK_ID, RECORD_ID, FORMULA, REDUCED_FORMULA, GROUP, MATERIAL_KEY, Y, Y_RAW]  # + features
