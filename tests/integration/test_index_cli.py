"""`orch status` / `orch monitor --once` through the run index, as a user runs them (CLI subprocesses):
the same answers with and without the index, changes after indexing seen, concurrent writers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.backends.local.submit import make_job_id
from orchestrator.record import index, record
from orchestrator.record.states import State
from orchestrator.record.tree import ResultsRoot, Run
from tests.integration.damagedtree import make_damaged

TB = 'Traceback (most recent call last):\n  File "/x/model.py", line 3, in f\n    g()\nKeyError: \'x\'\n'


def ended(root: ResultsRoot, name: str, state: State, n_steps: int = 100) -> Run:
    run = root.create_run(name, {"backend": "local", "total_steps": n_steps})
    record.submit(run, "local", job_id="1@1")
    n = record.claim(run, job_id="1@1", backend="local", pid=1)
    record.finish(run, n, state, exit_code=0 if state == State.COMPLETED else 1,
                  cause=None if state in (State.COMPLETED, State.FAILED) else state.value.lower())
    run.paths.heartbeat.write_text(json.dumps({"time": time.time() - 100, "step": n_steps, "total_steps": n_steps,
                                               "train_loss": 1.25, "tokens_per_sec": 999.0}))
    run.paths.metrics_history.parent.mkdir(exist_ok=True)
    run.paths.metrics_history.write_text(json.dumps({"step": n_steps, "val_loss": 1.5}) + "\n")
    if state == State.FAILED:  # undiagnosed: status diagnoses it from the log, in memory
        run.paths.stderr(n).write_text(TB)
    if state == State.COMPLETED:
        run.annotate(lambda rec: rec.__setitem__("checks", {"passed": True, "failing": [], "summary": "2/2 pass"}))
    return run


def live(root: ResultsRoot, name: str, state: State) -> Run:
    """An active run whose job is this test process (alive for the backend's poll)."""
    run = root.create_run(name, {"backend": "local", "total_steps": 1000})
    record.submit(run, "local", job_id=make_job_id(os.getpid()))
    if state == State.RUNNING:
        record.claim(run, job_id=make_job_id(os.getpid()), backend="local", pid=os.getpid())
        run.paths.heartbeat.write_text(json.dumps({"time": time.time(), "step": 10, "total_steps": 1000,
                                                   "last_eval": {"step": 10, "val_loss": 2.5}}))
    return run


def mixed_tree(results: Path, finished: int = 12) -> list[Run]:
    root = ResultsRoot(results)
    states = [State.COMPLETED, State.FAILED, State.CANCELLED, State.TIMEOUT]
    runs = [ended(root, f"exp{i % 3}", states[i % 4]) for i in range(finished)]
    runs += [live(root, "exp0", State.RUNNING), live(root, "exp1", State.QUEUED)]
    make_damaged(results)
    time.sleep(index.SETTLE + 0.1)  # past the settle time: every finished run can be indexed
    return runs


def timeless(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the heartbeat's age, which moves with the clock between two calls."""
    return [{k: v for k, v in r.items() if k != "heartbeat_age_s"} for r in rows]


def entries(results: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shard in (results / ".index").glob("runs-*.idx"):
        out.update(index.read_shard(shard)["entries"])
    return out


def test_status_is_the_same_with_and_without_the_index(orch) -> None:
    runs = mixed_tree(orch.results)
    cold = orch.json("status")  # no index yet: a full read, which writes it
    assert len(entries(orch.results)) == 12  # the finished runs; not the active or damaged ones
    warm = orch.json("status")
    shutil.rmtree(orch.results / ".index")
    again = orch.json("status")
    assert timeless(cold) == timeless(warm) == timeless(again)
    assert [list(r) for r in cold] == [list(r) for r in warm]  # kept rows are written out in the same key order
    assert len(cold) == 14 + 20 and sum(r["state"] == "DAMAGED" for r in warm) == 20
    assert {r["state"] for r in warm if r["run_id"] in {x.run_id for x in runs[-2:]}} == {"RUNNING", "QUEUED"}
    failed = [r for r in warm if r["state"] == "FAILED"]
    assert failed and all(r["failure"] == "user_error" for r in failed)  # the in-memory diagnosis, kept
    assert all(r["heartbeat_age_s"] >= 99 for r in warm if r["state"] == "COMPLETED")  # ages computed now
    assert all(r["run_dir"].startswith(str(orch.results)) for r in warm if r["state"] != "DAMAGED")
    for flags in (["--state", "FAILED"], ["--name", "exp1"], ["--state", "RUNNING", "--state", "DAMAGED"]):
        with_index = orch.json("status", *flags)
        shutil.rmtree(orch.results / ".index")
        assert timeless(with_index) == timeless(orch.json("status", *flags)), flags
    table = orch("status", "--wide").stdout  # the table reads the same rows (--wide: full run ids)
    assert all(r.run_id in table for r in runs)


def test_a_run_resumed_or_checked_after_indexing_is_seen(orch) -> None:
    runs = mixed_tree(orch.results, finished=8)
    orch.json("status")
    before = {r["run_id"]: r for r in orch.json("status")}
    failed = next(r for r in runs if r.state == State.FAILED)
    completed = next(r for r in runs if r.state == State.COMPLETED)
    assert before[failed.run_id]["state"] == "FAILED" and before[completed.run_id]["checks"] == "2/2 pass"
    record.resubmit(failed, "local", after_attempt=1, reason="resume")  # what `orch resume` records first
    completed.annotate(lambda rec: rec.__setitem__("checks", {"passed": False, "summary": "1/2 pass FAILED"}))
    gone = next(r for r in runs if r.state == State.TIMEOUT)
    shutil.rmtree(gone.paths.root)  # deleted by hand
    after = {r["run_id"]: r for r in orch.json("status")}
    assert after[failed.run_id]["state"] == "QUEUED" and after[failed.run_id]["attempts"] == 2
    assert after[completed.run_id]["checks"] == "1/2 pass FAILED"
    assert gone.run_id not in after
    shutil.rmtree(orch.results / ".index")
    assert timeless(list(after.values())) == timeless(orch.json("status"))


def test_concurrent_status_and_monitor_never_corrupt_the_index(orch) -> None:
    runs = mixed_tree(orch.results, finished=30)
    cmd = [sys.executable, "-m", "orchestrator"]
    stopped = [r for r in runs if r.state in (State.CANCELLED, State.TIMEOUT)]
    for round_ in range(2):
        procs = [subprocess.Popen(cmd + ["status", "--json"], env=orch.env, cwd=orch.cwd, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        procs += [subprocess.Popen(cmd + ["monitor", "--once", "--quiet"], env=orch.env, cwd=orch.cwd,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        # meanwhile: runs change under them, and the index vanishes once
        run = stopped[round_]
        n = record.resubmit(run, "local", after_attempt=record.attempt_n(run.reload()), reason="resume")
        job = make_job_id(os.getpid())  # alive: a concurrent monitor pass leaves it running
        record.claim(run, job_id=job, backend="local", pid=os.getpid())
        record.finish(run, n, State.COMPLETED, exit_code=0)
        if round_ == 0:
            shutil.rmtree(orch.results / ".index", ignore_errors=True)
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            assert "Traceback" not in err, err
            if p.args[3] == "status":
                rows = json.loads(out)
                assert len(rows) == len(runs) + 20  # every run, every time
    for shard in (orch.results / ".index").glob("*"):
        assert shard.name.startswith("runs-") and shard.suffix == ".idx", shard  # no stray temp files
        assert index.read_shard(shard)["format"] == index.FORMAT
    time.sleep(index.SETTLE + 0.1)
    warm = orch.json("status")
    shutil.rmtree(orch.results / ".index")
    assert timeless(warm) == timeless(orch.json("status"))
    resumed = [r["state"] for r in warm if r["run_id"] in {s.run_id for s in stopped[:2]}]
    assert resumed == ["COMPLETED", "COMPLETED"]  # both runs changed under the concurrent processes
