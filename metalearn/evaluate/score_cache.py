"""Persistent cache of support-only baseline scores, keyed by what fixes them.

Why: the baselines (support mean, kNN, random forest, scratch MLP) refit on every task x k x draw
and were most of the evaluate stage's time, while their scores are a pure function of the task's
rows, the draw, the baseline's code and hyperparameters and the protocol. A night whose meta-test
tasks did not change recomputes none of them; a task whose rows changed gets a new key.

One file per (baseline, task, protocol) holds that baseline's metric values for every (k, draw)
computed so far, so more draws or another k reuse what is there. The key of a file:

- the baseline: the name it is evaluated under, its class, its ``state_dict()`` (n_features,
  task_type, hyperparameters), a hash of the source of its module and of the protocol's (each with
  the ``metalearn`` modules they import from, see :func:`code_hash`), and the numpy / torch /
  scikit-learn versions;
- the task: sha256 of task_id, task_type, transform and the bytes of x and y;
- the protocol fields that fix the draws: seed, the query size, the device type.

Files are written atomically (temp + rename) and carry their key and a checksum of their entries;
a file that does not parse, has another key or fails its checksum is ignored (its scores are
recomputed and the file rewritten). Meta-trainable learners are never cached: their weights change.

Example:
    >>> cache = ScoreCache(work.baseline_cache(), cfg, device)
    >>> key = cache.key("rf", rf, task)           # None when the learner is not cacheable
    >>> known = cache.load(key)                   # {(k, draw): {metric: value}}
    >>> cache.store(key, {**known, **fresh})
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import sys
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metalearn import io
from metalearn.learn.sampling import Task

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the file layout or the meaning of a stored value changes
Entries = dict[tuple[int, int], dict[str, float]]  # (k, draw) -> {metric: value}
PROTOCOL_MODULES = ("metalearn.evaluate.protocol", __name__)  # normalisation, metrics, this file's format


def _sha(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "little"))  # length-prefixed: no two splits collide
        digest.update(chunk)
    return digest.hexdigest()


def task_fingerprint(task: Task) -> str:
    """sha256 of the task's identity and rows (x as float32, y as float64, both C-ordered)."""
    x = np.ascontiguousarray(task.x, dtype=np.float32)
    y = np.ascontiguousarray(task.y, dtype=np.float64)
    header = json.dumps([task.task_id, task.task_type, task.transform, list(x.shape)]).encode()
    return _sha(header, x.tobytes(), y.tobytes())


@functools.cache
def code_hash(module_name: str) -> str:
    """sha256 of a module's source and of the ``metalearn`` modules its globals come from (one level).

    One level covers what a baseline's numbers depend on (its module, the learners' shared helpers
    it imports, sampling's normalisation); "" when a source file cannot be read. Read once per
    process: the code that computes the scores is the code that was imported, whatever the files
    say later.
    """
    module = sys.modules[module_name]
    files = {getattr(module, "__file__", None)}
    for value in vars(module).values():
        owner = value if inspect.ismodule(value) else sys.modules.get(getattr(value, "__module__", None) or "")
        if owner is not None and owner.__name__.startswith("metalearn"):
            files.add(getattr(owner, "__file__", None))
    if None in files:
        return ""
    try:
        return _sha(*(Path(f).read_bytes() for f in sorted(files)))
    except OSError:
        return ""


_VERSIONS = {"numpy": np.__version__, "torch": torch.__version__, "sklearn": version("scikit-learn")}  # metadata: importing sklearn costs ~1.5 s


def _plain(obj: Any) -> Any:
    """A state_dict as JSON-able values; arrays and tensors by the hash of their bytes (str() truncates)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        array = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        return {"dtype": str(array.dtype), "shape": list(array.shape), "sha256": _sha(np.ascontiguousarray(array).tobytes())}
    return obj


def learner_fingerprint(name: str, learner: Any) -> str | None:
    """Hash of what fixes a support-only learner's predictions; None when it must not be cached.

    Not cached: meta-trainable learners, and learners whose code has no source file to hash
    (defined interactively), since an edit to them could not be noticed.
    """
    if getattr(learner, "meta_trainable", True):
        return None
    code = code_hash(type(learner).__module__)
    protocol = [code_hash(name) for name in PROTOCOL_MODULES]
    if not code or not all(protocol):
        return None
    return io.hash_json({
        "format": FORMAT,
        "name": name,
        "class": f"{type(learner).__module__}.{type(learner).__qualname__}",
        "state": _plain(learner.state_dict()),
        "code": code,
        "protocol": protocol,
        "versions": _VERSIONS,
    })


@dataclass
class ScoreCache:
    """Baseline scores under ``root``; see the module docstring for the key.

    Args:
        root: the cache directory (the evaluate stage passes ``WorkDir.baseline_cache()``).
        seed: ``EvalConfig.seed``; device_type: "cpu" | "cuda" (scores may differ between them).
    Counters ``hits`` / ``misses`` (per (k, draw) of a cached learner) and ``ignored`` (unreadable
    files) say what a run reused.
    """

    root: Path
    seed: int
    device_type: str = "cpu"
    hits: int = 0
    misses: int = 0
    ignored: int = 0
    _learners: dict[tuple[str, int], str | None] = field(default_factory=dict, repr=False)

    def key(self, name: str, learner: Any, task: Task, n_query: int) -> dict[str, Any] | None:
        """The key of ``learner`` (evaluated as ``name``) on ``task`` with ``n_query`` query rows."""
        memo = (name, id(learner))
        if memo not in self._learners:
            self._learners[memo] = learner_fingerprint(name, learner)
        learner_key = self._learners[memo]
        if learner_key is None:
            return None
        return {"learner": learner_key, "task": task_fingerprint(task), "seed": int(self.seed),
                "n_query": int(n_query), "device": self.device_type, "format": FORMAT}

    def count(self, known: Entries, k: int, n_draws: int) -> None:
        """Record the hits and misses of one (learner, task, k) over draws 0..n_draws-1."""
        found = sum((k, d) in known for d in range(n_draws))
        self.hits += found
        self.misses += n_draws - found

    def path(self, key: dict[str, Any]) -> Path:
        protocol = io.hash_json({k: key[k] for k in ("seed", "n_query", "device", "format")})[:12]
        return Path(self.root) / key["learner"][:24] / f"{key['task'][:24]}-{protocol}.json"

    def load(self, key: dict[str, Any]) -> Entries:
        """The entries stored under ``key``; {} when there is none or the file is not trustworthy."""
        path = self.path(key)
        if not path.exists():
            return {}
        try:
            blob = json.loads(path.read_text())
            entries = blob["entries"]
            if blob["key"] != key or blob["checksum"] != _checksum(entries):
                raise ValueError("key or checksum mismatch")
            return {(int(k), int(d)): {str(m): float(v) for m, v in metrics} for k, d, metrics in entries}
        except (OSError, ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            self.ignored += 1
            log.warning("ignoring baseline score cache file %s (%s); recomputing", path, err)
            return {}

    def store(self, key: dict[str, Any], entries: Entries) -> None:
        """Write ``entries`` under ``key`` atomically (replacing what was there)."""
        # metrics as [name, value] pairs: their order is the score table's row order
        rows = [[k, d, [[m, float(v)] for m, v in metrics.items()]] for (k, d), metrics in sorted(entries.items())]
        blob = {"key": key, "checksum": _checksum(rows), "entries": rows}
        io.write_bytes_atomic(self.path(key), json.dumps(blob, sort_keys=True, allow_nan=True).encode())


def _checksum(entries: Any) -> str:
    # repr round-trips floats exactly; NaN compares by its text, which is what we want here.
    return _sha(json.dumps(entries, sort_keys=True, allow_nan=True).encode())

