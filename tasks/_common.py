"""What every Prefect task here shares: cache keys from input manifests, artifact keys, throttled progress.

Why cache keys from manifests: every stage output carries a ``manifest.json`` whose ``content_hash``
hashes the data itself. Keying a task on (its path inputs' content hashes, its small JSON inputs)
means a rerun with unchanged inputs is a cache hit (state ``Cached``) and does no work, while a new
snapshot changes every downstream key. Paths are part of the key too, so two work directories with
identical content never hand each other's paths back.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.runtime import flow_run
from tqdm import tqdm

from metalearn import io
from metalearn.config import to_jsonable

ARTIFACT_PREFIX = "metalearn"


def manifest_hash(path: str | Path) -> str:
    """Content hash of a stage output (its manifest.json); raises if the output is incomplete."""
    return io.read_manifest(Path(path)).content_hash


def manifest_cache_key(*path_params: str) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """A ``cache_key_fn``: task name + every parameter, with ``path_params`` also keyed by content hash.

    Parameters named in ``path_params`` may also be dicts/lists of paths (e.g. checkpoints by name);
    those are keyed by each file's own content hash.
    """

    def key(ctx: TaskRunContext, parameters: dict[str, Any]) -> str:
        parts: dict[str, Any] = {"task": ctx.task.name}
        for name, value in sorted(parameters.items()):
            if name in path_params and value is not None:
                parts[name] = {"path": value, "content": content_of(value)}
            else:
                parts[name] = to_jsonable(value) if dataclasses.is_dataclass(value) else value
        return io.hash_json(parts)

    return key


def content_of(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: content_of(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [content_of(v) for v in value]
    path = Path(value)
    if path.is_dir():
        return manifest_hash(path)
    return io.hash_bytes(path.read_bytes())


def artifact_key(*parts: str) -> str:
    """An artifact key Prefect accepts (lowercase letters, digits, dashes), prefixed ``metalearn-``."""
    raw = "-".join((ARTIFACT_PREFIX, *parts)).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw)).strip("-")


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows as a GitHub-style Markdown table (for Markdown artifacts)."""
    if not rows:
        return "_(none)_\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


PROGRESS_ENV = "METALEARN_PROGRESS"  # set by `metalearn run`: also draw terminal bars on stderr


class ProgressArtifact:
    """A Prefect progress artifact fed by a library callback, updated at most every ``min_interval`` s.

    Why throttled: each update is an API call; a training loop calls back every step. When
    ``$METALEARN_PROGRESS`` is set (``metalearn run`` sets it), the same counts also drive a tqdm
    bar on stderr, so a user waiting in a terminal sees every long stage move.
    """

    def __init__(self, key: str, description: str, min_interval: float = 2.0, label: str | None = None) -> None:
        self.description = description
        self.min_interval = min_interval
        self._last = 0.0
        self._id = create_progress_artifact(progress=0.0, key=key, description=description)
        self._bar = None
        if os.environ.get(PROGRESS_ENV):
            self._bar = tqdm(total=0, desc=label or key.removeprefix(ARTIFACT_PREFIX + "-"), file=sys.stderr,
                             leave=False, dynamic_ncols=True)

    def update(self, done: float, total: float, force: bool = False) -> None:
        if self._bar is not None:
            self._bar.total, self._bar.n = total, done
            self._bar.refresh()
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        percent = 100.0 * min(max(done / total, 0.0), 1.0) if total else 100.0
        update_progress_artifact(artifact_id=self._id, progress=percent)

    def done(self) -> None:
        self.update(1, 1, force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def current_flow_run_id() -> str | None:
    """The flow run this code runs in (None outside one)."""
    return str(flow_run.id) if flow_run.id else None


def stamp(result: dict[str, Any]) -> dict[str, Any]:
    """Mark a task result with the flow run that computed it (and published its artifacts).

    A result later served from Prefect's cache keeps the old stamp, which is how the flow knows
    that tonight's run page has no artifacts of that stage yet and must republish them.
    """
    return {**result, "published_by": current_flow_run_id()}
