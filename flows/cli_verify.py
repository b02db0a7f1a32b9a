"""``metalearn verify``: check every stage output of a work directory against its manifest.

Read only: it reports, it does not move anything aside (the next run of a stage does that for an
output it needs, and rebuilds it). Exit status 0 when everything matches, 1 when anything does not.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from metalearn import io
from metalearn.features.integrity import is_set_aside
from metalearn.features.output import verify_features
from metalearn.ingest.snapshot import verify_workdir
from metalearn.layout import WorkDir
from metalearn.shards.store import complete_shards, verify_shards


def outputs(work: WorkDir, deep: bool) -> list[tuple[str, Path, Callable[[], list[str]]]]:
    """(stage, path, check) for every published output under ``work``."""
    found: list[tuple[str, Path, Callable[[], list[str]]]] = [
        ("snapshot", path, lambda problems=problems: problems) for path, problems in verify_workdir(work, deep).items()]
    found += [("features", path, lambda path=path: verify_features(path)) for path in work.all_feature_tables()
              if (path / io.MANIFEST).exists() and not is_set_aside(path) and not path.name.startswith(io.TMP_PREFIX)]
    found += [("shards", path, lambda path=path: verify_shards(path)) for path in complete_shards(work)]
    return found


def cmd_verify(args: argparse.Namespace) -> int:
    work = WorkDir.resolve(args.workdir)
    checked = bad = 0
    for stage, path, check in outputs(work, args.deep):
        problems = check()
        checked += 1
        if problems:
            bad += 1
            print(f"CORRUPT  {stage:<9} {path}: {'; '.join(problems)}")
        elif args.verbose:
            print(f"ok       {stage:<9} {path}")
    print(f"{checked} outputs checked under {work.root}: {bad} do not match their manifest"
          + (" (the next run of that stage moves each aside and rebuilds it)" if bad else ""))
    return 1 if bad else 0
