"""Prefect task for the representation stage: the transfer representation the shards' splits allow.

Keyed by the snapshot's and the shards' content and the config: a night with unchanged data loads
the fitted members and vectors (the library caches them by the content of their training rows too,
so even a cold Prefect cache costs a load, not a fit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from metalearn.layout import WorkDir
from metalearn.represent.transfer import TransferConfig
from metalearn.represent.vectors import Vectors, represent_shards
from tasks._common import artifact_key, manifest_cache_key, markdown_table, stamp


@task(name="represent", cache_key_fn=manifest_cache_key("snapshot_dir", "shards_dir"), persist_result=True)
def represent(workdir: str, snapshot_dir: str, shards_dir: str, cfg: TransferConfig) -> dict[str, Any]:
    """Fit (or load) the representation and write the shards' vectors.

    Returns:
        {"path" (the vectors directory), "representation_dir", "key", "created", "n_members",
        "excluded_families", "n_held_out_materials", "seconds", "size_bytes"}.
    """
    logger = get_run_logger()
    out = represent_shards(WorkDir.resolve(workdir), Path(snapshot_dir), Path(shards_dir), cfg, log=logger.info)
    result = {"path": str(out.vectors_dir), "representation_dir": str(out.representation_dir), "key": out.key,
              "created": out.created, "n_members": out.n_members, "excluded_families": list(out.excluded_families),
              "n_held_out_materials": out.n_held_out_materials, "seconds": round(out.seconds, 1),
              "size_bytes": out.size_bytes}
    logger.info("representation %s: %d members (%s), %.1f MB", out.key, out.n_members,
                "fitted" if out.created else "loaded", out.size_bytes / 1e6)
    publish_representation(result)
    return stamp(result)


def publish_representation(result: dict[str, Any]) -> None:
    """The representation artifact: its members and what it was kept from (leakage rule)."""
    vectors = Vectors.load(Path(result["path"]))
    rows = [{"column": c["column"], "dataset_id": c["dataset_id"], "family": c["family"]} for c in vectors.columns]
    create_markdown_artifact(
        markdown=(f"# Transfer representation `{result['key']}`\n\n"
                  f"- members: **{result['n_members']}** ({'fitted tonight' if result['created'] else 'loaded'}, "
                  f"{result['seconds']} s, {result['size_bytes'] / 1e6:.1f} MB)\n"
                  f"- left out (meta-test-property families): {', '.join(result['excluded_families']) or 'none'}\n"
                  f"- held-out materials removed (meta-test-chemistry): {result['n_held_out_materials']}\n\n"
                  + markdown_table(rows, ["column", "dataset_id", "family"])),
        key=artifact_key("representation"), description="transfer representation members and leakage rule")
