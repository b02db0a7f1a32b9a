"""Plan folders of the features stage: who is using one, and removing those nobody is.

A plan folder (``WorkDir.feature_plans(feature_set) / <plan id>``) holds the chunk inputs of one
plan until :func:`metalearn.features.assemble.assemble_features` has published the output. A run
killed halfway leaves its folder behind, and when the next run's plan differs (some chunks were
cached meanwhile) nothing would ever reuse or delete it.

Ownership: every process that plans, featurizes a chunk of, or assembles a plan writes
``owners/<host>-<pid>.json`` (host, pid, boot id, process start time) into the folder. A folder is
stale, and removed by the next :func:`clean_stale`, when

* no live process owns it: an owner on this host is alive while a process with its pid and start
  time runs; an owner on another host cannot be asked and counts as alive until the idle limit;
  folders without owner records (written before they existed) are owned by nobody; or
* it has been idle (no owner record written) for longer than any run lasts,
  ``PLAN_STALE_AFTER_S``: a long-lived worker that once featurized a chunk of an abandoned plan
  does not keep it forever.

Concurrency: claiming and cleaning hold an exclusive ``flock`` on the plans folder (:func:`locked`),
so a cleaner never removes a folder between another run's decision to reuse it and its claim;
removal renames the folder to a ``.tmp-`` name first, so nobody sees half a folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from functools import lru_cache
from pathlib import Path

from metalearn.features.integrity import locked
from metalearn.io import TMP_PREFIX, write_json_atomic

PLAN_STALE_AFTER_S = 24 * 3600  # longer than any featurize run (the whole bundle takes minutes)
OWNERS = "owners"


@lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """A process's start time in clock ticks since boot (Linux), "" where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may contain spaces


def _identity() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "boot_id": _boot_id(), "start": _start_ticks(pid)}


def _alive(owner: dict) -> bool:
    """Whether an owner on this host still runs; owners on other hosts count as alive."""
    if owner.get("host") != socket.gethostname():
        return True
    if owner.get("boot_id") and owner["boot_id"] != _boot_id():
        return False  # rebooted since: every pid was reused
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process with that pid: compare start times below
    start = _start_ticks(int(owner["pid"]))
    return not (owner.get("start") and start and start != owner["start"])


def _owner_file(plan_dir: Path) -> Path:
    me = _identity()
    return plan_dir / OWNERS / f"{me['host']}-{me['pid']}.json"


def claim(plan_dir: Path, create: bool = True) -> bool:
    """Record (or refresh) this process as an owner of ``plan_dir``; call under ``locked(plans root)``.

    Returns whether the record is new (so only its creator releases it). With ``create=False``
    a plan folder that no longer exists is left alone (and False returned).
    """
    if not create and not plan_dir.is_dir():
        return False
    path = _owner_file(plan_dir)
    new = not path.exists()
    write_json_atomic(path, _identity())
    return new


def release(plan_dir: Path) -> None:
    """Drop this process's owner record (the folder stays for its other owners)."""
    _owner_file(plan_dir).unlink(missing_ok=True)


def _owners(plan_dir: Path) -> list[tuple[dict, float]]:
    out = []
    for path in (plan_dir / OWNERS).glob("*.json"):
        try:
            out.append((json.loads(path.read_text()), path.stat().st_mtime))
        except (OSError, ValueError):  # a record being replaced right now, or torn: not an owner
            continue
    return out


def is_stale(plan_dir: Path, now: float | None = None) -> bool:
    """No live owner, or idle for longer than ``PLAN_STALE_AFTER_S``."""
    now = time.time() if now is None else now
    owners = _owners(plan_dir)
    if not owners:
        return True
    idle = now - max(mtime for _, mtime in owners)
    return idle > PLAN_STALE_AFTER_S or not any(_alive(owner) for owner, _ in owners)


def remove(plan_dir: Path) -> None:
    """Rename aside, then delete: a concurrent lister never sees half a folder."""
    doomed = plan_dir.with_name(f"{TMP_PREFIX}stale-{plan_dir.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(plan_dir, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def clean_stale(plans_root: Path, now: float | None = None) -> list[str]:
    """Remove stale plan folders and leftovers of killed removals; call under ``locked(plans_root)``.

    Returns the names of the plan folders removed.
    """
    if not plans_root.is_dir():
        return []
    removed = []
    for path in sorted(plans_root.iterdir()):
        if not path.is_dir():
            continue
        if path.name.startswith(TMP_PREFIX):
            shutil.rmtree(path, ignore_errors=True)  # a removal killed between rename and delete
        elif is_stale(path, now):
            remove(path)
            removed.append(path.name)
    return removed


def clean_old_tmp(parent: Path, now: float | None = None) -> list[str]:
    """Remove ``.tmp-`` files and folders directly under ``parent`` idle for ``PLAN_STALE_AFTER_S``.

    Unlike :func:`metalearn.io.clean_stale_tmp`, safe while other runs write: a temp file of a
    live run is younger than any run lasts.
    """
    now = time.time() if now is None else now
    removed = []
    if not parent.is_dir():
        return removed
    for path in parent.glob(f"{TMP_PREFIX}*"):
        try:
            idle = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        if idle > PLAN_STALE_AFTER_S:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def finish(plan_dir: Path) -> None:
    """After the output is published: drop this owner; remove the folder if nobody else uses it."""
    with locked(plan_dir.parent):
        release(plan_dir)
        if plan_dir.is_dir() and is_stale(plan_dir):
            remove(plan_dir)
