"""Local copies of logged models, keyed by tracking store + model name + version, under the work directory.

Why: resolving ``models:/metalearn@champion`` means importing MLflow and opening the registry
database, seconds per call. A consumer's first call copies the version to
``<workdir>/cache/models/`` (:meth:`metalearn.layout.WorkDir.model_cache`) and notes which version
the alias named; later calls read the copy and never open the registry. A version's copy is
immutable (versions do not change). An alias (or ``latest``) is trusted while the SQLite store
file is unchanged (same size and modification time: moving an alias writes the file), for a
server store for :data:`ALIAS_TTL_S`; if the SQLite file is absent the cached version is used
with a note. Copies are published by renaming a fully written directory (never half a model).

No mlflow here: the caller passes ``resolve`` and ``download`` (``metalearn.registry`` provides them).

Example:
    >>> cache = ModelCache(WorkDir.resolve().model_cache())
    >>> path, note = cache.lookup(store, "models:/metalearn@champion")   # (None, None) on a miss
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from metalearn import io
from metalearn.layout import WorkDir

ALIAS_TTL_S = 300.0  # how long an alias resolved against a server store is trusted
SOURCE_FILE = "metalearn-source.json"


def resolve_tracking_uri(uri: str | None = None, workdir: str | os.PathLike | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<workdir>/mlflow.db``."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if chosen:
        return chosen
    return WorkDir.resolve(workdir).mlflow_uri()


def sqlite_path(store: str) -> Path | None:
    """The database file of a ``sqlite:///`` store (absolute), else None."""
    if not store.startswith("sqlite:///"):
        return None
    return Path(store[len("sqlite:///"):]).expanduser().resolve()


def store_key(store: str) -> str:
    """One spelling per store: a SQLite store by its resolved file path."""
    path = sqlite_path(store)
    return f"sqlite:///{path}" if path is not None else store.rstrip("/")


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` or ``runs:/`` URI. ``mutable``: an alias, stage or ``latest``."""

    uri: str
    kind: str  # "version" | "alias" | "logged" | "run"
    name: str  # registered model name, logged model id, or run id
    version: str | None = None
    alias: str | None = None
    path: str = ""

    @property
    def mutable(self) -> bool:
        return self.kind == "alias"


def parse_model_uri(uri: str) -> ModelRef | None:
    """``models:/name/3``, ``models:/name@alias``, ``models:/name/latest``, ``models:/m-<id>``, ``runs:/id/path``.

    Returns None for anything else (a local directory is used as it is).
    """
    if uri.startswith("models:/"):
        rest = uri[len("models:/"):].strip("/")
        if "@" in rest:
            name, alias = rest.rsplit("@", 1)
            return ModelRef(uri, "alias", name, alias=alias)
        if "/" in rest:
            name, tail = rest.rsplit("/", 1)
            return ModelRef(uri, "version", name, version=tail) if tail.isdigit() else ModelRef(uri, "alias", name, alias=tail)
        return ModelRef(uri, "logged", rest)
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
        return ModelRef(uri, "run", run_id, path=path)
    return None


def _slug(text: str) -> str:
    """A folder name for any model name: readable part + hash (names may hold spaces or slashes)."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', text)[:40]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _stamp(store: str) -> list[int] | None:
    path = sqlite_path(store)
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


class ModelCache:
    """Model copies under ``root``: ``<store hash>/<name>/v<version>/`` plus alias pointers beside them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _store_dir(self, store: str) -> Path:
        return self.root / hashlib.sha256(store_key(store).encode()).hexdigest()[:16]

    def entry(self, store: str, ref: ModelRef, version: str | None = None) -> Path:
        """Where the immutable copy of ``ref`` (at ``version`` for an alias) lives."""
        base = self._store_dir(store)
        if ref.kind == "run":
            return base / "runs" / _slug(f"{ref.name}/{ref.path}")
        if ref.kind == "logged":
            return base / "logged" / _slug(ref.name)
        return base / "registered" / _slug(ref.name) / f"v{version or ref.version}"

    def _pointer(self, store: str, ref: ModelRef) -> Path:
        return self._store_dir(store) / "registered" / _slug(ref.name) / f"alias-{_slug(ref.alias or '')}.json"

    def lookup(self, store: str, uri: str) -> tuple[Path | None, str | None]:
        """(cached copy or None, a note for the user or None), without opening the store."""
        ref = parse_model_uri(uri)
        if ref is None:
            return None, None
        if not ref.mutable:
            path = self.entry(store, ref)
            return (path, None) if (path / "MLmodel").is_file() else (None, None)
        try:
            pointer = json.loads(self._pointer(store, ref).read_text())
        except (OSError, ValueError):
            return None, None
        path = self.entry(store, ref, pointer["version"])
        if not (path / "MLmodel").is_file():
            return None, None
        if sqlite_path(store) is not None:
            stamp = _stamp(store)
            if stamp is None:
                return path, (f"the tracking store {store} is absent; using version {pointer['version']} of "
                              f"{ref.name}@{ref.alias}, cached {pointer['resolved']}")
            return (path, None) if stamp == pointer.get("stamp") else (None, None)
        fresh = time.time() - float(pointer.get("resolved_at", 0)) < ALIAS_TTL_S
        return (path, None) if fresh else (None, None)

    def fill(self, store: str, uri: str, resolve: Callable[[str, str], str],
             download: Callable[[str, str, Path], None]) -> Path:
        """Resolve (for an alias) and copy ``uri`` into the cache unless that version is there already.

        Args:
            resolve: (uri, store) -> version string of a registered model alias.
            download: (uri, store, empty directory) -> None, writes the model's files there.
        """
        ref = parse_model_uri(uri)
        if ref is None:
            raise ValueError(f"{uri!r} is neither a models:/ nor a runs:/ URI")
        version = resolve(uri, store) if ref.mutable else ref.version
        path = self.entry(store, ref, version)
        if not (path / "MLmodel").is_file():
            if path.exists():  # not a published copy (written by hand or by an older layout): replace it
                shutil.rmtree(path)
            source = f"models:/{ref.name}/{version}" if ref.mutable else uri
            with io.staged_dir(path) as tmp:
                download(source, store, tmp)
                io.write_json_atomic(tmp / SOURCE_FILE, {"tracking_uri": store_key(store), "uri": source,
                                                         "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if ref.mutable:
            io.write_json_atomic(self._pointer(store, ref), {
                "uri": uri, "version": version, "stamp": _stamp(store), "resolved_at": time.time(),
                "resolved": time.strftime("%Y-%m-%d %H:%M:%S")})
        return path


__all__ = ["ALIAS_TTL_S", "ModelCache", "ModelRef", "parse_model_uri", "resolve_tracking_uri", "sqlite_path",
           "store_key"]
