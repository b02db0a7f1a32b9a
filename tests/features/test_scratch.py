"""Plan folders left by killed runs are removed once stale, never while a live run owns them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from feature_support import make_snapshot, records_frame

from metalearn.features import scratch
from metalearn.features.assemble import assemble_features
from metalearn.features.plan import FeaturizeConfig, featurize_chunk, plan_features
from metalearn.features.stage import build_features
from metalearn.io import repo_data_dir
from metalearn.layout import WorkDir

CFG = FeaturizeConfig(chunk_size=20)


@pytest.fixture(scope="module")
def formulas() -> list[str]:
    path = repo_data_dir() / "composition" / "crabnet_matbench" / "matbench_expt_gap.csv.gz"
    return pd.read_csv(path, keep_default_na=False)["formula"].drop_duplicates().head(60).tolist()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _own(plan_dir: Path, pid: int, **override) -> None:
    """An owner record as another process on this host would have written it."""
    record = {"host": socket.gethostname(), "pid": pid, "boot_id": scratch._boot_id(),
              "start": scratch._start_ticks(pid), **override}
    (plan_dir / scratch.OWNERS).mkdir(parents=True, exist_ok=True)
    (plan_dir / scratch.OWNERS / f"{record['host']}-{pid}.json").write_text(json.dumps(record))


def _orphan(plan_dir: Path, pid: int) -> None:
    """Make ``plan_dir`` look like it was left by process ``pid`` only."""
    for record in (plan_dir / scratch.OWNERS).glob("*.json"):
        record.unlink()
    _own(plan_dir, pid)


def test_killed_runs_folder_is_removed_by_the_next_plan(tmp_path, formulas):
    work = WorkDir.resolve(tmp_path / "work")
    killed = plan_features(make_snapshot(tmp_path / "a", records_frame(formulas[:40])), work, CFG)
    featurize_chunk(Path(killed.chunks[0]), Path(killed.cache_dir))  # ... then the run is killed
    _orphan(Path(killed.plan_dir), _dead_pid())
    # the rerun's plan differs (one chunk is cached now), so nothing would reuse the old folder
    rerun = plan_features(make_snapshot(tmp_path / "b", records_frame(formulas[:40])), work, CFG)
    assert rerun.plan_dir != killed.plan_dir and not Path(killed.plan_dir).exists()
    assert [p.name for p in Path(rerun.plan_dir).parent.iterdir() if p.is_dir()] == [Path(rerun.plan_dir).name]


def test_a_live_owner_keeps_its_folder_until_it_exits(tmp_path, formulas):
    work = WorkDir.resolve(tmp_path / "work")
    other = plan_features(make_snapshot(tmp_path / "a", records_frame(formulas[:40])), work, CFG)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as proc:
        _orphan(Path(other.plan_dir), proc.pid)  # a concurrent run in another process
        build_features(make_snapshot(tmp_path / "b", records_frame(formulas[20:])), work, CFG)
        assert Path(other.plan_dir).is_dir()
        for chunk in other.chunks:  # ... which can still finish
            featurize_chunk(Path(chunk), Path(other.cache_dir))
        assert (Path(assemble_features(other)) / "manifest.json").exists()
        assert Path(other.plan_dir).is_dir()  # still owned by the live process, kept
        proc.kill()
    build_features(make_snapshot(tmp_path / "c", records_frame(formulas[:10])), work, CFG)
    assert not Path(other.plan_dir).exists()


def test_staleness_rules(tmp_path):
    plan_dir = tmp_path / "plans" / "p"
    (plan_dir / "chunks").mkdir(parents=True)
    assert scratch.is_stale(plan_dir)  # no owner record: written before records existed
    with scratch.locked(plan_dir.parent):
        assert scratch.claim(plan_dir) and not scratch.claim(plan_dir)  # created once, refreshed after
    assert not scratch.is_stale(plan_dir)
    assert scratch.is_stale(plan_dir, now=time.time() + scratch.PLAN_STALE_AFTER_S + 60)  # idle too long
    scratch.release(plan_dir)
    _own(plan_dir, os.getpid(), start="1")  # our pid, but another process's start time: pid reused
    assert scratch.is_stale(plan_dir)
    _own(plan_dir, os.getpid(), boot_id="another-boot")
    assert scratch.is_stale(plan_dir)
    _own(plan_dir, 1, host="elsewhere")  # another host cannot be asked: alive until idle
    assert not scratch.is_stale(plan_dir)
    assert scratch.is_stale(plan_dir, now=time.time() + scratch.PLAN_STALE_AFTER_S + 60)


def test_featurize_chunk_after_the_plan_folder_is_gone(tmp_path, formulas):
    work = WorkDir.resolve(tmp_path / "work")
    plan = plan_features(make_snapshot(tmp_path / "a", records_frame(formulas[:20])), work, CFG)
    shard = featurize_chunk(Path(plan.chunks[0]), Path(plan.cache_dir))
    scratch.remove(Path(plan.plan_dir))  # a concurrent run finished the same plan and cleaned up
    assert featurize_chunk(Path(plan.chunks[0]), Path(plan.cache_dir)) == shard
    assert not Path(plan.plan_dir).exists()  # not re-created by the retry


def test_old_temp_files_are_removed_young_ones_kept(tmp_path):
    old, young = tmp_path / ".tmp-old.parquet", tmp_path / ".tmp-young"
    old.write_bytes(b"x")
    young.mkdir()
    past = time.time() - scratch.PLAN_STALE_AFTER_S - 60
    os.utime(old, (past, past))
    assert scratch.clean_old_tmp(tmp_path) == [old.name] and young.exists()
