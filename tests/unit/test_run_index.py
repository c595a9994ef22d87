"""The run index (orchestrator/record/index.py): a cache of finished runs that must always agree
with a full read of the run folders, whatever happens to them or to the index itself."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from orchestrator.errors import RunNotFound
from orchestrator.monitor.monitor import Monitor
from orchestrator.record import index, record
from orchestrator.record.states import State
from orchestrator.record.tree import Damaged, ResultsRoot, Run
from tests.integration.damagedtree import make_damaged

TB = 'Traceback (most recent call last):\n  File "/x/model.py", line 3, in f\n    g()\nKeyError: \'x\'\n'


@pytest.fixture(autouse=True)
def no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Index run.json files written a moment ago (the settle time only guards same-tick rewrites)."""
    monkeypatch.setattr(index, "SETTLE", 0.0)


def finished(root: ResultsRoot, name: str, state: State = State.COMPLETED, *, checks: str | None = "2/2") -> Run:
    """A run taken through its real transitions: submitted, started, ended."""
    run = root.create_run(name, {"backend": "local", "total_steps": 100})
    record.submit(run, "local", job_id="1@1")
    n = record.claim(run, job_id="1@1", backend="local", pid=1)
    record.finish(run, n, state, exit_code=0 if state == State.COMPLETED else 1,
                  cause=None if state == State.COMPLETED else "user_error")
    run.paths.heartbeat.write_text(json.dumps({"time": time.time() - 50, "step": 100, "total_steps": 100,
                                               "train_loss": 1.5, "last_eval": {"step": 100, "val_loss": 1.7}}))
    if state == State.FAILED:
        run.paths.stderr(n).write_text(TB)
    if checks:
        run.annotate(lambda rec: rec.__setitem__("checks", {"passed": True, "failing": [], "summary": checks}))
    return run


def tree(results: Path) -> tuple[ResultsRoot, list[Run]]:
    root = ResultsRoot(results)
    runs = [finished(root, "done") for _ in range(4)] + [finished(root, "bad", State.FAILED, checks=None),
                                                        finished(root, "bad", State.CANCELLED, checks=None)]
    active = root.create_run("live", {"backend": "local"})
    record.submit(active, "local", job_id="1@1")
    make_damaged(results)
    return root, runs + [active]


def listing(runs: list[Run], damaged: list[Damaged]) -> tuple[list[tuple[str, str, dict]], list[tuple[str, str]]]:
    """What a full read says: every run's folder, state and record; every damaged folder and why."""
    return ([(r.paths.dir, str(r.state), r.record) for r in runs], [(str(d.path), d.problem) for d in damaged])


def test_indexed_scan_equals_a_full_read_and_reads_only_active_and_damaged(tmp_path: Path) -> None:
    root, runs = tree(tmp_path)
    full = listing(*root.scan())
    cold = index.scan(root)
    assert listing(cold.runs, cold.damaged) == full and cold.read == len(runs) + 20
    cold.save()
    shards = list((tmp_path / ".index").iterdir())  # shards holding entries (a missing one is an empty one)
    assert shards and all(p.name.startswith("runs-") and p.name.endswith(".idx") for p in shards)
    assert sum(len(index.read_shard(p)["entries"]) for p in shards) == 6
    warm = index.scan(root)
    assert listing(warm.runs, warm.damaged) == full  # records of indexed runs are read lazily, when asked
    assert warm.read == 1 + 20  # the active run and the damaged folders; the 6 finished runs come from the index
    assert sum(r.indexed is not None for r in warm.runs) == 6


def test_a_run_changed_after_indexing_is_read_again(tmp_path: Path) -> None:
    root, runs = tree(tmp_path)
    index.scan(root).save()
    failed, completed = runs[4], runs[0]
    # `orch resume` of a FAILED run: a new attempt, QUEUED
    record.resubmit(failed, "local", after_attempt=1, reason="resume")
    # a new check verdict on a finished run (`orch check` stores its summary in run.json)
    completed.annotate(lambda rec: rec.__setitem__("checks", {"passed": False, "failing": ["x"], "summary": "1/2 pass FAILED"}))
    scan = index.scan(root)
    by_id = {r.run_id: r for r in scan.runs}
    assert by_id[failed.run_id].indexed is None and by_id[failed.run_id].state == State.QUEUED
    assert scan.read == 2 + 1 + 20  # the two changed runs, read again (with the active and damaged ones)
    assert by_id[completed.run_id].record["checks"]["summary"] == "1/2 pass FAILED"
    assert listing(scan.runs, scan.damaged) == listing(*root.scan())


def test_runs_added_deleted_or_damaged_by_hand_are_seen(tmp_path: Path) -> None:
    root, runs = tree(tmp_path)
    index.scan(root).save()
    gone, broken, edited = runs[0], runs[1], runs[2]
    shutil.rmtree(gone.paths.root)
    broken.paths.run_json.write_text('{"run_id": "x", "sta')  # truncated in place
    rec = json.loads(edited.paths.run_json.read_text())
    rec["state_reason"] = "edited by hand, in place"
    with open(edited.paths.run_json, "r+") as fh:  # same inode
        fh.write(json.dumps(rec))
        fh.truncate()
    added = finished(root, "done")
    scan = index.scan(root)
    ids = {r.run_id for r in scan.runs}
    assert gone.run_id not in ids and added.run_id in ids
    assert any(d.run_id == broken.run_id and "not valid JSON" in d.problem for d in scan.damaged)
    assert {r.run_id: r for r in scan.runs}[edited.run_id].record["state_reason"] == "edited by hand, in place"
    assert listing(scan.runs, scan.damaged) == listing(*root.scan())
    scan.save()
    again = index.scan(root)  # the shards no longer name the deleted or damaged run
    entries = {k for f in (tmp_path / ".index").iterdir() for k in index.read_shard(f)["entries"]}
    assert f"done/{gone.run_id}" not in entries and f"done/{broken.run_id}" not in entries
    assert f"done/{added.run_id}" in entries
    assert listing(again.runs, again.damaged) == listing(*root.scan())


@pytest.mark.parametrize("damage", ["garbage", "empty", "other-format", "list", "entries-garbage", "torn", "old-format",
                                    "deleted", "folder"])
def test_a_corrupt_or_deleted_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    root, runs = tree(tmp_path)
    index.scan(root).save()
    shards = sorted((tmp_path / ".index").glob("runs-*.idx"))
    assert shards
    for shard in shards:
        if damage == "garbage":
            shard.write_bytes(os.urandom(200))
        elif damage == "empty":
            shard.write_text("")
        elif damage == "other-format":
            shard.write_text(json.dumps({"format": 999, "entries": {}}))
        elif damage == "list":
            shard.write_text("[1, 2, 3]")
        elif damage == "entries-garbage":  # entries that are not what the index writes, or name wrong states
            data = index.read_shard(shard)
            data["entries"] = {k: (["x"] if i % 2 else v[:4] + ["RUNNING", 1, {}, None])
                               for i, (k, v) in enumerate(data["entries"].items())}
            shard.write_text(json.dumps(data) + "\n" + "\n" * len(data["entries"]))
        elif damage == "torn":  # cut short while written by hand or by a tool that is not atomic
            shard.write_bytes(shard.read_bytes()[:-3])
        elif damage == "old-format":  # what the previous version wrote: one JSON document
            data = index.read_shard(shard)
            shard.unlink()
            shard.with_suffix(".json").write_text(json.dumps({"format": 1, "entries": data["entries"]}))
    if damage == "deleted":
        shutil.rmtree(tmp_path / ".index")
    elif damage == "folder":
        shutil.rmtree(tmp_path / ".index")
        (tmp_path / ".index").mkdir()
        (tmp_path / ".index" / "runs-00.idx").mkdir()  # a shard that cannot even be replaced
    scan = index.scan(root)
    assert listing(scan.runs, scan.damaged) == listing(*root.scan())
    assert scan.read == len(runs) + 20 if damage != "folder" else scan.read >= 1 + 20
    scan.save()
    rebuilt = index.scan(root)
    assert listing(rebuilt.runs, rebuilt.damaged) == listing(*root.scan())
    if damage != "folder":
        assert rebuilt.read == 1 + 20
        assert not list((tmp_path / ".index").glob("runs-*.json"))  # old shards removed
        for shard in (tmp_path / ".index").glob("runs-*.idx"):
            assert index.read_shard(shard)["format"] == index.FORMAT


def test_a_run_json_changed_within_the_settle_time_is_not_indexed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = tree(tmp_path)
    monkeypatch.setattr(index, "SETTLE", 3600.0)
    index.scan(root).save()
    assert index.scan(root).read == 7 + 20  # nothing was old enough to be trusted


def test_rows_are_kept_per_code_version_and_files_besides_run_json_are_final(tmp_path: Path) -> None:
    root, runs = tree(tmp_path)
    scan = index.scan(root, rows="v1")
    for r in scan.runs:
        scan.keep_row(r, {"state": str(r.state)}, json.dumps({"step": 100, "note": "a\tb"}))
    indexed = next(r for r in scan.runs if r.indexed is not None)
    with pytest.raises(ValueError):  # a text is one line of the shard
        scan.keep_row(indexed, {}, "two\nlines")
    scan.save()
    warm = index.scan(root, rows="v1")
    assert sum(warm.row(r) is not None for r in warm.runs) == 6  # the finished ones; the active run has none
    # the heartbeat of a finished run is final: its row stands until its run.json changes
    runs[0].paths.heartbeat.write_text(json.dumps({"time": time.time(), "step": 5}))
    value, text = {r.run_id: warm.row(r) for r in index.scan(root, rows="v1").runs}[runs[0].run_id]
    assert value == {"state": str(runs[0].state)} and json.loads(text) == {"step": 100, "note": "a\tb"}
    other = index.scan(root, rows="v2")  # other code: its rows are not trusted
    assert all(other.row(r) is None for r in other.runs)
    monitor_like = index.scan(root)  # a caller without rows keeps them as they are
    monitor_like.save()
    assert sum(index.scan(root, rows="v1").row(r) is not None for r in warm.runs) == 6


def test_the_index_is_no_run(tmp_path: Path) -> None:
    root, runs = tree(tmp_path)
    index.scan(root).save()
    assert (tmp_path / ".index").is_dir()
    runs_now, damaged = root.scan()
    assert not any(".index" in r.paths.dir for r in runs_now) and not any(".index" in str(d.path) for d in damaged)
    with pytest.raises(RunNotFound):
        root.resolve(".index")
    with pytest.raises(RunNotFound):
        root.resolve("runs-00")


def test_an_unwritable_tree_is_served_without_an_index(tmp_path: Path) -> None:
    root, runs = tree(tmp_path)
    (tmp_path / ".index").write_text("a file where the index folder goes")
    scan = index.scan(root)
    scan.save()  # cannot write: silently not
    assert listing(scan.runs, scan.damaged) == listing(*root.scan())
    assert index.scan(root).read == len(runs) + 20


def test_monitor_passes_skip_handled_runs_and_see_a_run_that_failed_since(tmp_path: Path) -> None:
    root, runs = tree(tmp_path)
    first = Monitor(tmp_path).run_pass()
    # (no spec.yaml: checks fail; the live run's job 1@1 is long gone: taken as cancelled)
    assert {e["event"] for e in first.events} >= {"checks_failed", "failed", "cancelled"}
    Monitor(tmp_path).run_pass()  # reads the runs the first pass marked, indexes them
    quiet = Monitor(tmp_path).run_pass()
    assert [e["event"] for e in quiet.events] == []
    scan = index.scan(root)
    assert sum(r.indexed is not None for r in scan.runs) == 7 and scan.read == 20
    # a cancelled run resumed, then failing: the next pass notices it
    run = runs[5]
    n = record.resubmit(run, "local", after_attempt=1, reason="resume")
    record.claim(run, job_id="2@2", backend="local", pid=2)
    record.finish(run, n, State.FAILED, exit_code=1, cause="user_error")
    run.paths.stderr(n).write_text(TB)
    later = Monitor(tmp_path).run_pass()
    assert [(e["event"], e["run_id"], e["attempt"]) for e in later.events if e["event"] == "failed"] == \
        [("failed", run.run_id, 2)]
    assert json.loads(run.paths.run_json.read_text())["monitor"]["done_attempt"] == 2
