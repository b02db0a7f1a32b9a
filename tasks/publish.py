"""Republish a cached stage's artifacts, so tonight's flow run page describes tonight's model.

Why: a stage served from Prefect's cache does not run its body, so without this the newest
evaluation on the Artifacts page would belong to an older run. Each cacheable task stamps its
result with the flow run that computed it (``published_by``); the flow calls :func:`republish`
for a result stamped by another run. The artifacts are rebuilt from the result and the files it
names, not recomputed.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks._common import current_flow_run_id
from tasks.evaluate import publish_evaluation
from tasks.featurize import publish_features
from tasks.register import publish_promotion, publish_run
from tasks.represent import publish_representation
from tasks.shards import publish_shards

PUBLISHERS = {"features": publish_features, "shards": publish_shards, "evaluate": publish_evaluation,
              "register": publish_run, "promote": publish_promotion, "represent": publish_representation}


@task(name="republish", task_run_name="republish-{stage}", cache_policy=NO_CACHE)
def republish(stage: str, result: dict[str, Any]) -> None:
    PUBLISHERS[stage](result)


def ensure_published(stage: str, result: dict[str, Any]) -> dict[str, Any]:
    """Republish ``result``'s artifacts unless this flow run computed it; returns ``result``."""
    if result.get("published_by") != current_flow_run_id():
        republish(stage, result)
    return result
