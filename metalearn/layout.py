"""The work directory's layout: the one place that names a subfolder under it.

Why one owner: every stage writes under one configurable root (``--workdir``, else
``$METALEARN_HOME``, else ``./.metalearn``), and a reader of one stage must find what another
wrote. Stages receive a :class:`WorkDir` and ask it for paths; renaming a subfolder is a
one-line change here.

Example:
    >>> work = WorkDir.resolve("/tmp/run")
    >>> work.raw("bundled")
    PosixPath('/tmp/run/raw/bundled')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkDir:
    """Paths under the work directory ``root`` (absolute). Creating ``root`` is :meth:`resolve`'s job."""

    root: Path

    @classmethod
    def resolve(cls, workdir: str | os.PathLike | WorkDir | None = None) -> WorkDir:
        """``workdir``, else ``$METALEARN_HOME``, else ./.metalearn; created if missing.

        Raises:
            NotADirectoryError: the path exists and is not a directory.
            PermissionError: the directory cannot be created or written.
        """
        if isinstance(workdir, WorkDir):
            return workdir
        chosen = workdir or os.environ.get("METALEARN_HOME") or ".metalearn"
        path = Path(chosen).expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"work directory {path} exists and is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PermissionError(f"cannot create work directory {path}: {err.strerror or err}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"work directory {path} is not writable")
        return cls(path)

    # --- ingest ---
    def raw_root(self) -> Path:
        return self.root / "raw"

    def raw(self, source: str) -> Path:
        """Snapshots of one source: ``raw/<source>/<snapshot_id>/``."""
        return self.raw_root() / source

    def mp_cache(self) -> Path:
        """Where mp-api may keep local dataset files (never ``~/mp_datasets``)."""
        return self.root / "cache" / "mp_datasets"

    # --- features ---
    def features(self, feature_set: str) -> Path:
        """One feature set's outputs: per-snapshot feature tables, the material cache, chunk plans."""
        return self.root / "features" / feature_set

    def feature_table(self, feature_set: str, key: str) -> Path:
        """One snapshot's features: ``features/<feature_set>/<key>/`` (key chosen by the features stage)."""
        return self.features(feature_set) / key

    def all_feature_tables(self) -> list[Path]:
        """Every per-snapshot features directory of every feature set (not the cache, not the plans)."""
        root = self.root / "features"
        skip = {"cache", "plans"}
        return sorted(p for p in root.glob("*/*") if p.is_dir() and p.name not in skip) if root.exists() else []

    def feature_cache(self, feature_set: str) -> Path:
        return self.features(feature_set) / "cache"

    def feature_plans(self, feature_set: str) -> Path:
        return self.features(feature_set) / "plans"

    # --- shards ---
    def shards_root(self) -> Path:
        return self.root / "shards"

    def shards(self, snapshot_id: str, feature_set: str, config_key: str) -> Path:
        return self.shards_root() / snapshot_id / feature_set / config_key

    def all_shards(self) -> list[Path]:
        """Every directory at the depth of :meth:`shards` (complete, staged or set aside alike)."""
        return sorted(p for p in self.shards_root().glob("*/*/*") if p.is_dir())

    # --- representation ---
    def representations(self) -> Path:
        return self.root / "representations"

    # --- learn / evaluate ---
    def models(self, shards_key: str) -> Path:
        """Trained learners of one set of shards: ``models/<shards hash>/<learner>-<config hash>/``."""
        return self.root / "models" / shards_key

    def evaluations(self, shards_key: str) -> Path:
        return self.root / "evaluations" / shards_key

    def baseline_cache(self) -> Path:
        """Baseline scores keyed by (task content, n_support, draw), reused across nights."""
        return self.root / "cache" / "baseline_scores"

    # --- services and records ---
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db()}"

    def prefect_home(self) -> Path:
        return self.root / "prefect"

    def lock_file(self) -> Path:
        """The OS-level lock a run holds on this work directory."""
        return self.root / ".lock"

    def model_cache(self) -> Path:
        """Local copies of registered models, keyed by (tracking store, name, version)."""
        return self.root / "cache" / "models"
