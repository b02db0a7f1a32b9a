"""Materials Project (mp-api) source: the config, the wide ``summary`` table and its long records.

The network half (session, retries, incremental fetch, snapshot: ``ingest_mp``) lives in
:mod:`metalearn.ingest.mp_client`; this module is pure record shaping, so it imports without
mp-api or requests.

One MP ``materials/summary`` document becomes one row of the wide *summary* table: nested values are
flattened into unit-named columns (``bulk_modulus.vrh`` -> ``k_vrh_gpa``, ``symmetry.number`` ->
``spacegroup_number``), the structure stays a pymatgen ``Structure.as_dict()`` JSON text, and
``last_updated`` is an ISO-8601 UTC string. :func:`to_records` melts that table into long records,
one per (material, property) with a non-null value, under dataset ids ``mp_summary:<property_key>``.

Example:
    >>> frame = summary_frame([{"material_id": "mp-149", "formula_pretty": "Si", "band_gap": 0.6}])
    >>> records, properties = to_records(frame)
    >>> records["dataset_id"].tolist()
    ['mp_summary:band_gap_ev']
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from metalearn import schema as S

SOURCE = "mp"
DATASET_PREFIX = "mp_summary"
SOURCE_DB = "Materials Project"
DEFAULT_ENDPOINT = "https://api.materialsproject.org/"


class MPIngestError(ValueError):
    """An MP ingest could not finish (bad key, retry budget spent, malformed page, ...).

    The message names the cause and never contains the API key; nothing was written.

    Attributes:
        transient: True when the same call may succeed later without any change on our side:
            HTTP 429/5xx that outlasted the retry budget, connection failures, timeouts, truncated
            pages. False for a missing, malformed or rejected key, malformed data, a bad request
            or criteria that match nothing. Orchestrators decide retries from this, not the text.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class MPProperty:
    """One learnable scalar of the summary document and where it sits in the nested JSON."""

    key: str  # unit-named column / property_key
    path: tuple[str, ...]  # location in the summary document
    description: str
    unit: str
    family: str
    transform: str = "none"


# Order = column order of the summary table. Moduli and dielectric constants are learned in log10
# (they span decades), matching the bundled sources of the same families.
MP_PROPERTIES: tuple[MPProperty, ...] = (
    MPProperty("band_gap_ev", ("band_gap",), "band gap (MP summary, GGA/GGA+U/r2SCAN)", "eV", "band_gap"),
    MPProperty("formation_energy_ev_per_atom", ("formation_energy_per_atom",),
               "formation energy per atom (MP summary)", "eV/atom", "formation_energy"),
    MPProperty("energy_above_hull_ev_per_atom", ("energy_above_hull",),
               "energy above the convex hull (MP summary)", "eV/atom", "stability"),
    MPProperty("density_g_per_cm3", ("density",), "density (MP summary)", "g/cm^3", "density"),
    MPProperty("volume_a3", ("volume",), "volume of the MP structure's cell", "A^3", "volume"),
    MPProperty("k_vrh_gpa", ("bulk_modulus", "vrh"), "bulk modulus K_VRH (MP elasticity)", "GPa",
               "bulk_modulus", "log10"),
    MPProperty("g_vrh_gpa", ("shear_modulus", "vrh"), "shear modulus G_VRH (MP elasticity)", "GPa",
               "shear_modulus", "log10"),
    MPProperty("total_magnetization_mub", ("total_magnetization",),
               "total magnetization of the MP cell", "muB per cell", "magnetization"),
    MPProperty("e_total", ("e_total",), "total (electronic + ionic) dielectric constant (MP DFPT)",
               "dimensionless", "dielectric_constant", "log10"),
    MPProperty("n", ("n",), "refractive index (MP DFPT)", "dimensionless", "refractive_index"),
    MPProperty("e_ij_max_c_per_m2", ("e_ij_max",), "max longitudinal piezoelectric modulus (MP DFPT)",
               "C/m^2", "piezoelectric"),
)

# What we ask the API for (``fields=``): exactly what the summary table needs.
SUMMARY_FIELDS: tuple[str, ...] = (
    "material_id", "formula_pretty", "structure", "symmetry", "band_gap", "formation_energy_per_atom",
    "energy_above_hull", "density", "volume", "bulk_modulus", "shear_modulus", "total_magnetization",
    "e_total", "n", "e_ij_max", "last_updated",
)
LISTING_FIELDS: tuple[str, ...] = ("material_id", "last_updated")

MATERIAL_ID = "material_id"
LAST_UPDATED = "last_updated"
_META_COLUMNS = {MATERIAL_ID: "object", S.FORMULA: "object", S.STRUCTURE_JSON: "object",
                 "spacegroup_number": "Int64", "spacegroup_symbol": "object", "crystal_system": "object"}
SUMMARY_COLUMNS: tuple[str, ...] = (*_META_COLUMNS, *(p.key for p in MP_PROPERTIES), LAST_UPDATED)
# search() keywords the ingest sets itself; criteria may not override them.
_RESERVED_CRITERIA = {"fields", "all_fields", "num_chunks", "chunk_size", "_page", "_sort_fields"}


@dataclass(frozen=True)
class MPConfig:
    """How to talk to the MP API and what to ask for. JSON-able; the API key is never part of it.

    Args:
        endpoint: API base URL; None -> ``$MP_API_ENDPOINT`` -> the public API.
        criteria: keyword filters for ``MPRester().materials.summary.search``, e.g.
            ``{"elements": ["Si", "O"]}`` or ``{"material_ids": ["mp-149"]}``. Empty means everything
            (fetched page by page over REST, never through the client's bulk S3 path).
        chunk_size: documents per page (the API's ``_limit``; the server caps it at 1000).
        id_batch_size: material ids per request when fetching full documents for changed ids.
        max_retries: retries per request on HTTP 429/500/502/503/504 and connection errors.
        backoff_base: seconds; waits are ``backoff_base * 2**(n-1)`` (the first retry is immediate),
            each capped at ``backoff_max`` (which also caps a server's Retry-After).
        timeout: seconds per HTTP request (connect and read).
        full_refresh: ignore the previous snapshot and fetch every document again.
    """

    endpoint: str | None = None
    criteria: Mapping[str, Any] = field(default_factory=dict)
    chunk_size: int = 1000
    id_batch_size: int = 1000
    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    timeout: float = 60.0
    full_refresh: bool = False

    def __post_init__(self) -> None:
        reserved = _RESERVED_CRITERIA & set(self.criteria)
        if reserved:
            raise ValueError(f"MPConfig.criteria may not set {sorted(reserved)}; the ingest chooses them")
        if not 1 <= self.chunk_size <= 1000:
            raise ValueError(f"chunk_size={self.chunk_size}; the MP API accepts 1..1000")
        if self.id_batch_size < 1 or self.max_retries < 0:
            raise ValueError(f"id_batch_size={self.id_batch_size} must be >= 1 and "
                             f"max_retries={self.max_retries} >= 0")
        if self.backoff_base < 0 or self.backoff_max < 0 or self.timeout <= 0:
            raise ValueError("backoff_base and backoff_max must be >= 0 and timeout > 0 (seconds)")

    def resolved_endpoint(self) -> str:
        """The endpoint actually used, with a trailing slash (mp-api joins paths onto it)."""
        url = self.endpoint or os.environ.get("MP_API_ENDPOINT") or DEFAULT_ENDPOINT
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"MP endpoint {url!r} is not an http(s) URL")
        return url if url.endswith("/") else url + "/"

    def criteria_json(self) -> dict[str, Any]:
        """The criteria as plain JSON (tuples -> lists), for manifests and hashing."""
        return json.loads(json.dumps(dict(self.criteria), sort_keys=True, default=list))


def _at(doc: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = doc
    for part in path:
        if not isinstance(value, Mapping):
            # Older documents carry moduli as a bare number instead of {"voigt", "reuss", "vrh"}.
            return value if part == "vrh" else None
        value = value.get(part)
    return value


def _number(value: Any, what: str, material_id: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MPIngestError(f"malformed summary document {material_id!r}: {what}={value!r} is not a number")
    try:
        return float(value)
    except ValueError:
        raise MPIngestError(f"malformed summary document {material_id!r}: {what}={value!r} is not a number") from None


def parse_last_updated(value: Any) -> str | None:
    """ISO-8601 UTC text of an API datetime (ISO string, ``{"$date": ...}`` or a monty datetime dict)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = value.get("$date", value.get("string"))
    if not isinstance(value, (datetime, str)):
        raise TypeError(f"unrecognised last_updated value {value!r}")
    stamp = pd.Timestamp(value)  # ValueError if the text is not a date
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.isoformat()


def _structure_json(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "as_dict"):  # a pymatgen Structure (use_document_model=True)
        value = value.as_dict()
    return json.dumps(value, sort_keys=True)


def flatten_summary_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One summary document -> one wide row (SUMMARY_COLUMNS). Raises MPIngestError if malformed."""
    material_id = doc.get(MATERIAL_ID) if isinstance(doc, Mapping) else None
    if not isinstance(material_id, str) or not material_id:
        raise MPIngestError(f"malformed summary document without a material_id: {str(doc)[:200]}")
    symmetry = doc.get("symmetry") or {}
    crystal_system = symmetry.get("crystal_system")
    row: dict[str, Any] = {
        MATERIAL_ID: material_id,
        S.FORMULA: doc.get("formula_pretty"),
        S.STRUCTURE_JSON: _structure_json(doc.get("structure")),
        "spacegroup_number": symmetry.get("number"),
        "spacegroup_symbol": symmetry.get("symbol"),
        "crystal_system": getattr(crystal_system, "value", crystal_system),
    }
    for prop in MP_PROPERTIES:
        row[prop.key] = _number(_at(doc, prop.path), ".".join(prop.path), material_id)
    try:
        row[LAST_UPDATED] = parse_last_updated(doc.get(LAST_UPDATED))
    except (TypeError, ValueError) as exc:
        raise MPIngestError(f"malformed summary document {material_id!r}: {exc}") from None
    return row


def normalise_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical columns, dtypes and row order (by material_id), so equal content hashes equal."""
    out = frame.reindex(columns=list(SUMMARY_COLUMNS))
    for column, dtype in _META_COLUMNS.items():
        if dtype == "Int64":
            out[column] = pd.to_numeric(out[column]).astype("Int64")
        else:
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    for prop in MP_PROPERTIES:
        out[prop.key] = pd.to_numeric(out[prop.key]).astype("float64")
    out[LAST_UPDATED] = out[LAST_UPDATED].astype(object).where(out[LAST_UPDATED].notna(), None)
    return out.sort_values(MATERIAL_ID, kind="stable").reset_index(drop=True)


def summary_frame(docs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The wide summary table of ``docs`` (plain dicts from ``use_document_model=False``)."""
    rows = [flatten_summary_doc(doc) for doc in docs]
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    duplicated = frame[MATERIAL_ID][frame[MATERIAL_ID].duplicated()].tolist()
    if duplicated:
        raise MPIngestError(f"the API returned material ids more than once: {duplicated[:5]}")
    return normalise_summary(frame)


def properties_table(keys: Iterable[str] | None = None) -> pd.DataFrame:
    """PROPERTIES_SCHEMA rows for the MP summary properties (all, or those in ``keys``)."""
    wanted = set(keys) if keys is not None else {p.key for p in MP_PROPERTIES}
    rows = [{S.DATASET_ID: f"{DATASET_PREFIX}:{p.key}", S.PROPERTY: p.description, S.PROPERTY_KEY: p.key,
             S.UNIT: p.unit, S.TASK_TYPE: "regression", S.SOURCE_DB: SOURCE_DB, S.FAMILY: p.family,
             S.TRANSFORM: p.transform} for p in MP_PROPERTIES if p.key in wanted]
    return pd.DataFrame(rows, columns=[f.name for f in S.PROPERTIES_SCHEMA])


def to_records(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Melt the wide summary table into long records and their property rows.

    Returns:
        records: RECORDS_SCHEMA columns, one row per (material, property) with a non-null value;
            ``record_id`` = ``mp_summary:<key>:<material_id>`` (stable across re-ingests).
        properties: one PROPERTIES_SCHEMA row per dataset that has at least one record.
    """
    frames = []
    for prop in MP_PROPERTIES:
        if prop.key not in summary:
            continue
        part = summary[summary[prop.key].notna()]
        dataset_id = f"{DATASET_PREFIX}:{prop.key}"
        frames.append(pd.DataFrame({
            S.RECORD_ID: dataset_id + ":" + part[MATERIAL_ID].astype(str),
            S.DATASET_ID: dataset_id,
            S.MATERIAL_ID: part[MATERIAL_ID].astype(str),
            S.FORMULA: part[S.FORMULA],
            S.STRUCTURE_JSON: part[S.STRUCTURE_JSON],
            S.TARGET: part[prop.key].astype("float64"),
            S.ORIG_SPLIT: None,
        }))
    columns = [f.name for f in S.RECORDS_SCHEMA]
    records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    present = {d.split(":", 1)[1] for d in records[S.DATASET_ID].unique()}
    return records[columns], properties_table(present)


def quarantine_nonpositive_log(records: pd.DataFrame, properties: pd.DataFrame
                               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move records of log10-transformed properties with target <= 0 to a quarantine table.

    Why: MP lists negative moduli for mechanically unstable materials; log10 would make them NaN.
    """
    log_sets = set(properties.loc[properties[S.TRANSFORM] == "log10", S.DATASET_ID])
    bad = records[S.DATASET_ID].isin(log_sets) & (records[S.TARGET] <= 0)
    rows = [{S.RECORD_ID: r[S.RECORD_ID], S.DATASET_ID: r[S.DATASET_ID], S.REASON: "nonfinite_target",
             S.DETAIL: f"target {r[S.TARGET]!r} <= 0 for a log10-transformed property",
             S.RAW: json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                for k, v in r.items()}, default=str)}
            for r in records[bad].to_dict("records")]
    quarantine = pd.DataFrame(rows, columns=[f.name for f in S.QUARANTINE_SCHEMA])
    return records[~bad].reset_index(drop=True), quarantine

