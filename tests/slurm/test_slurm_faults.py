"""The truth on SLURM under faults: scancel, requeues, node failure, a controller or slurmdbd that is
down, and the warning signal on two nodes, each on the real local cluster (tests/slurm/cluster.sh).

Every test reproduces one defect of the issue as a user meets it (the real `lm` trainer through the
`orch` CLI, or the stub trainer where training does not matter) and checks the run record, `orch
status`, `orch monitor` and Slurm's own view agree. Tests that stop a daemon or change MinJobAge
bring the cluster back in `finally` (`cluster.sh up` is idempotent).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.slurm.parse import parse_show_job

from .conftest import REPO, STUB, Orch, cluster, make_orch, squeue_field, wait_until

pytestmark = pytest.mark.slurm

QUICKSTART = str(REPO / "jobs" / "quickstart.yaml")
# Long enough to be stopped while training; each test keeps its jobs short otherwise.
LONG = ["--backend", "slurm", "--set", "train.max_steps=100000", "--set", "train.log_every=10",
        "--set", "eval.every=1000", "--set", "checkpoint.every=1000", "--set", "retry.max_attempts=3",
        "--set", "retry.backoff=1"]


def rec(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "run.json").read_text())


def step(run_dir: str | Path) -> int:
    try:
        return int(json.loads((Path(run_dir) / "heartbeat.json").read_text()).get("step") or 0)
    except (OSError, ValueError):
        return 0


def show_job(job_id: str) -> dict[str, str]:
    return parse_show_job(subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                                         text=True).stdout)


def events(orch: Orch) -> list[dict[str, Any]]:
    path = orch.results / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def status(orch: Orch, *args: str, check: int = 0) -> dict[str, dict[str, Any]]:
    res = orch("status", "--json", *args, check=check)
    return {r["run_id"]: r for r in json.loads(res.stdout)}


def submit(orch: Orch, *args: str) -> dict[str, Any]:
    [row] = orch.json("submit", *args, timeout=120)
    return row


# ------------------------------------------------------------------------------------- 1 and 2
def test_scancel_of_a_running_job_is_cancelled_never_requeued(lm_orch: Orch) -> None:
    """Defect 1: SIGTERM without the warning signal is a cancellation. One job is stopped with
    `scancel` (which also signals the trainer directly), one with `orch cancel`: both end CANCELLED,
    Slurm never requeues them, and the monitor retries neither."""
    by_scancel = submit(lm_orch, QUICKSTART, *LONG)
    by_orch = submit(lm_orch, QUICKSTART, *LONG)
    for row in (by_scancel, by_orch):
        wait_until(lambda: step(row["run_dir"]) >= 50, 180, "step 50", row["run_dir"], every=1)
    subprocess.run(["scancel", by_scancel["job_id"]], check=True)
    lm_orch("cancel", by_orch["run_id"])
    for row in (by_scancel, by_orch):
        wait_until(lambda: (rec(row["run_dir"])["attempts"][0].get("ended_at")), 60, "the wrapper's record",
                   row["run_dir"])
        wait_until(lambda: show_job(row["job_id"]).get("JobState") != "COMPLETING", 60, "Slurm to end the job")
        job = show_job(row["job_id"])
        assert job["JobState"] == "CANCELLED" and job["Restarts"] == "0", job  # no `scontrol requeue`
        r = rec(row["run_dir"])
        assert r["state"] == "CANCELLED" and r["failure"]["class"] == "cancelled", r
        assert len(r["attempts"]) == 1 and r["attempts"][0]["cause"] == "cancelled", r["attempts"]
        # the trainer got the SIGTERM and checkpointed: welcome for a later `orch resume`, not a requeue
        assert "preempted: SIGTERM" in (Path(row["run_dir"]) / "logs" / "stdout-1.log").read_text()
    out = lm_orch("monitor", "--once", timeout=120).stdout
    assert "RETRIED" not in out
    evs = events(lm_orch)
    assert {e["run_id"] for e in evs if e["event"] == "cancelled"} == {by_scancel["run_id"], by_orch["run_id"]}
    assert not [e for e in evs if e["event"] in ("retried", "failed")], evs
    rows = status(lm_orch)
    assert {rows[r["run_id"]]["state"] for r in (by_scancel, by_orch)} == {"CANCELLED"}
    assert {rows[r["run_id"]]["failure"] for r in (by_scancel, by_orch)} == {"cancelled"}


def test_scancel_of_a_requeued_pending_job_is_cancelled_and_not_retried(lm_orch: Orch) -> None:
    """Defects 1 and 2: a job requeued after the warning signal waits (PENDING, BeginTime) and is
    `scancel`ed there. Status says CANCELLED at once (and writes nothing); the monitor records the
    cancellation on the attempt that never started and resubmits nothing."""
    row = submit(lm_orch, QUICKSTART, *LONG)
    run_dir, job_id = row["run_dir"], row["job_id"]
    wait_until(lambda: step(run_dir) >= 20, 180, "step 20", run_dir, every=1)
    # What `--signal=B:USR1@grace` does before a time limit or a preemption: the batch shell gets USR1.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)
    wait_until(lambda: rec(run_dir)["attempts"][0].get("ended_at"), 60, "the first attempt to end", run_dir)
    first = rec(run_dir)
    assert first["state"] == "QUEUED" and first["attempts"][0]["requeued"] is True, first
    assert first["attempts"][0]["exit_code"] == 75 and first["attempts"][0]["cause"] == "preempted"
    wait_until(lambda: squeue_field(job_id, "%T") == "PENDING", 30, "Slurm to hold the requeued job")
    queued = status(lm_orch)[row["run_id"]]
    assert queued["state"] == "QUEUED" and "requeued after preempted" in queued["reason"], queued

    subprocess.run(["scancel", job_id], check=True)
    wait_until(lambda: squeue_field(job_id, "%T") == "CANCELLED", 30, "scancel")
    before = (Path(run_dir) / "run.json").read_bytes()
    # (the shared cache answers for query_interval: the scheduler's next answer comes within it)
    seen = wait_until(lambda: (s := status(lm_orch)[row["run_id"]])["state"] != "QUEUED" and s, 10, "status")
    assert seen["state"] == "CANCELLED" and seen["failure"] == "cancelled", seen
    assert (Path(run_dir) / "run.json").read_bytes() == before  # plain status is read-only

    out = lm_orch("monitor", "--once", timeout=120).stdout
    assert "RETRIED" not in out and "FAILED" not in out, out
    r = rec(run_dir)
    assert r["state"] == "CANCELLED" and r["failure"]["class"] == "cancelled" and r["failure"]["attempt"] == 2, r
    assert [a["n"] for a in r["attempts"]] == [1, 2] and not r["attempts"][1].get("started_at"), r["attempts"]
    assert r["attempts"][0]["cause"] == "preempted"  # attempt 1 keeps its own note
    assert lm_orch("monitor", "--once", timeout=120).stdout.count("RETRIED") == 0
    assert not [e for e in events(lm_orch) if e["event"] in ("retried", "failed")]
    assert show_job(job_id)["JobState"] == "CANCELLED"


# ------------------------------------------------------------------------------------------- 3
def test_node_failure_is_slurms_requeue_and_the_monitor_makes_no_second_job(lm_orch: Orch) -> None:
    """Defect 3: the node under a running job is set DOWN while `orch monitor --loop` runs every 3 s.
    Slurm requeues the job itself; while it waits the run shows QUEUED with the reason, nothing is
    resubmitted, the requeued attempt resumes and completes, and the old note is gone."""
    row = submit(lm_orch, QUICKSTART, "--backend", "slurm", "--set", "train.max_steps=600",
                 "--set", "checkpoint.every=100", "--set", "train.log_every=10", "--set", "retry.max_attempts=3",
                 "--set", "retry.backoff=1")
    run_dir, job_id = row["run_dir"], row["job_id"]
    monitor = subprocess.Popen([sys.executable, "-m", "orchestrator", "monitor", "--loop", "--interval", "3"],
                               cwd=lm_orch.cwd, env=lm_orch.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    node = ""
    try:
        wait_until(lambda: list(Path(run_dir).glob("ckpt/step-*/COMPLETE")), 180, "a first checkpoint", run_dir)
        node = squeue_field(job_id, "%N")
        assert node in ("n1", "n2"), node
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=orch-test"], check=True)
        wait_until(lambda: rec(run_dir)["attempts"][0].get("ended_at"), 60, "the first attempt to end", run_dir)
        first = rec(run_dir)["attempts"][0]
        assert first["cause"] == "node_fail" and first["requeued"] is True, first
        assert squeue_field(job_id, "%T") == "PENDING"
        held = status(lm_orch)[row["run_id"]]
        assert held["state"] == "QUEUED" and "requeued after node_fail" in held["reason"], held
        time.sleep(7)  # two monitor passes while Slurm's requeue waits
        assert len(rec(run_dir)["attempts"]) == 1
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)  # skip the rest
        wait_until(lambda: rec(run_dir)["state"] in ("COMPLETED", "FAILED", "CANCELLED"), 300,
                   "the requeued attempt to finish", run_dir, every=1)
    finally:
        if node:
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
        monitor.send_signal(signal.SIGTERM)
        monitor_out = monitor.communicate(timeout=60)[0]
    r = rec(run_dir)
    assert r["state"] == "COMPLETED", r
    assert [(a["n"], a["job_id"], a["restart_count"]) for a in r["attempts"]] == [(1, job_id, 0), (2, job_id, 1)]
    assert "failure" not in r and not r.get("pending_reason") and not r.get("state_reason"), r
    assert "resumed from step-" in (Path(run_dir) / "logs" / "stdout-2.log").read_text()
    assert "another job wrapper" not in (Path(run_dir) / "logs" / "scheduler.log").read_text()
    evs = events(lm_orch)
    assert not [e for e in evs if e["event"] in ("retried", "failed")], evs
    assert "RETRIED" not in monitor_out, monitor_out
    done = status(lm_orch)[row["run_id"]]
    assert done["state"] == "COMPLETED" and done["failure"] is None and not done["reason"], done
    # one job for the run, ever: Slurm knows no other job of this name
    names = subprocess.run(["squeue", "-h", "-t", "all", "-n", r["name"], "-o", "%i|%k"], capture_output=True,
                           text=True).stdout
    assert all(line.split("|")[0] == job_id for line in names.splitlines() if line.endswith(run_dir)), names


# ------------------------------------------------------------------------------------------- 4
def test_controller_down_exits_3_after_one_bounded_wait(tmp_path: Path) -> None:
    """Defect 4: slurmctld stopped. `orch status` and `orch monitor --once` exit 3 with the reason;
    six callers at once finish together after one bounded wait (the failed query is cached, not
    repeated), showing the last known state marked stale; within the query interval a later call
    answers at once; the run record is not touched."""
    orch = make_orch(tmp_path, STUB, "query_interval: 10\n")
    orch.env["ORCH_SLURM_QUERY_TIMEOUT"] = "8"
    spec = tmp_path / "up.yaml"
    spec.write_text("name: up\ntrainer: stub_trainer:TRAINER\nbackend: slurm\nresources: {cpus_per_task: 1, mem: 500M, time: '00:05:00'}\n"
                    "retry: {max_attempts: 1}\nconfig: {seconds: 120}\n")
    row = submit(orch, str(spec))
    wait_until(lambda: rec(row["run_dir"])["state"] == "RUNNING", 60, "the job to start", row["run_dir"])
    assert status(orch)[row["run_id"]]["state"] == "RUNNING"  # the last answer Slurm gives before it goes
    before = (Path(row["run_dir"]) / "run.json").read_bytes()
    t_answer = time.monotonic()
    cluster("stop", "slurmctld")
    try:
        time.sleep(max(0.0, 10.5 - (time.monotonic() - t_answer)))  # that answer is now older than query_interval

        def call(args: tuple[str, ...]) -> tuple[float, subprocess.CompletedProcess[str]]:
            t0 = time.monotonic()
            res = orch(*args, check=False, timeout=120)
            return time.monotonic() - t0, res

        calls = [("status", "--json")] * 5 + [("monitor", "--once")]
        with ThreadPoolExecutor(len(calls)) as pool:
            results = list(pool.map(call, calls))
        took = [t for t, _ in results]
        print(f"six concurrent calls with slurmctld down took {sorted(round(t, 1) for t in took)} s")
        for (_, res), args in zip(results, calls):
            assert res.returncode == 3, (args, res.returncode, res.stdout, res.stderr)
            assert "did not answer" in res.stderr, res.stderr
        for _, res in results[:5]:
            [r] = [x for x in json.loads(res.stdout) if x["run_id"] == row["run_id"]]
            assert r["state"] == "RUNNING" and r["stale"] and r["reason"].startswith("stale"), r
        assert max(took) < 8 + 15, took  # one bounded wait (ORCH_SLURM_QUERY_TIMEOUT=8 + start-up)
        assert max(took) - min(took) < 6, took  # nobody queued behind a second failing query
        t0 = time.monotonic()
        again = orch("status", check=3)  # within query_interval of the failure: answered at once
        assert time.monotonic() - t0 < 6 and "stale" in again.stdout, again.stdout
        assert "did not answer" in again.stderr
        assert (Path(row["run_dir"]) / "run.json").read_bytes() == before
        assert [e for e in events(orch) if e["event"] == "backend_unavailable"]
    finally:
        cluster("up")
    subprocess.run(["scancel", row["job_id"]], check=False)


# ------------------------------------------------------------------------------------------- 5
STUB_SPEC = ("name: {name}\ntrainer: stub_trainer:TRAINER\nbackend: slurm\n"
             "resources: {{cpus_per_task: 1, mem: 500M, time: '00:05:00'{extra}}}\nconfig: {{seconds: 300}}\n")
LATER = ", sbatch: ['--begin=now+3600']"  # held in the queue: cancelled while pending


def test_without_accounting_states_come_from_the_run_folder_never_guessed(tmp_path: Path) -> None:
    """Defect 5: slurmdbd down, jobs aged out of squeue (a test-local MinJobAge). A job `scancel`ed
    while pending is CANCELLED, never node_fail; a job whose trainer was SIGKILLed is killed (the
    wrapper's record), and so is one whose whole batch step was SIGKILLed (Slurm's 0:9, remembered
    from while slurmctld knew it); plain status writes nothing; the monitor resubmits none of them.
    A user who never asked while Slurm knew the pending job gets CANCELLED too, from the run folder
    (an attempt never started), recorded by the monitor as inferred."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    orch, cold = make_orch(tmp_path / "a", STUB), make_orch(tmp_path / "b", STUB)  # two users' caches
    paths = {}
    for name, extra in (("pending", LATER), ("trainerkill", ""), ("stepkill", ""), ("coldpending", LATER)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(STUB_SPEC.format(name=name, extra=extra))
    cluster("stop", "slurmdbd")
    try:
        rows = {name: submit(cold if name == "coldpending" else orch, str(p)) for name, p in paths.items()}
        for name in ("trainerkill", "stepkill"):
            wait_until(lambda: rec(rows[name]["run_dir"])["state"] == "RUNNING" and
                       (Path(rows[name]["run_dir"]) / "logs" / "stdout-1.log").exists(), 60, f"{name} to start")
        time.sleep(1.0)
        for name in ("pending", "coldpending"):
            assert squeue_field(rows[name]["job_id"], "%T") == "PENDING"
            subprocess.run(["scancel", rows[name]["job_id"]], check=True)
        os.kill(_trainer_pid(rec(rows["trainerkill"]["run_dir"])["attempts"][0]["pid"]), signal.SIGKILL)
        os.kill(rec(rows["stepkill"]["run_dir"])["attempts"][0]["pid"], signal.SIGKILL)  # the wrapper itself
        for name in rows:
            wait_until(lambda: squeue_field(rows[name]["job_id"], "%T") in ("CANCELLED", "FAILED", "COMPLETED"), 60,
                       f"{name} to end")
        wait_until(lambda: rec(rows["trainerkill"]["run_dir"])["state"] == "FAILED", 30, "the wrapper's record")
        records = {name: (Path(r["run_dir"]) / "run.json").read_bytes() for name, r in rows.items()}
        seen = status(orch)  # while slurmctld still knows them (sacct cannot answer: slurmdbd is down)
        assert seen[rows["stepkill"]["run_id"]]["failure"] == "killed", seen[rows["stepkill"]["run_id"]]
        cluster("min-job-age", "1")
        try:
            wait_until(lambda: all(not squeue_field(r["job_id"], "%T") for r in rows.values()), 150,
                       "the jobs to age out of squeue", every=3)
        finally:
            cluster("min-job-age", "3600")
        got = status(orch)
        assert {n: (Path(r["run_dir"]) / "run.json").read_bytes() for n, r in rows.items()} == records  # read-only
        assert got[rows["pending"]["run_id"]]["state"] == "CANCELLED", got[rows["pending"]["run_id"]]
        assert got[rows["pending"]["run_id"]]["failure"] == "cancelled"
        for name in ("trainerkill", "stepkill"):
            assert (got[rows[name]["run_id"]]["state"], got[rows[name]["run_id"]]["failure"]) == ("FAILED", "killed")
        unseen = status(cold)[rows["coldpending"]["run_id"]]  # Slurm forgot it before anyone asked
        assert unseen["state"] == "CANCELLED" and unseen["failure"] == "cancelled", unseen

        for o in (orch, cold):
            assert "RETRIED" not in o("monitor", "--once", timeout=120).stdout
            assert not [e for e in events(o) if e["event"] == "retried"]
        pend = rec(rows["pending"]["run_dir"])
        assert pend["state"] == "CANCELLED" and pend["failure"]["class"] == "cancelled", pend
        kill = rec(rows["stepkill"]["run_dir"])
        assert kill["state"] == "FAILED" and kill["failure"]["class"] == "killed" and kill["failure"]["signal"] == 9, kill
        assert rec(rows["trainerkill"]["run_dir"])["failure"]["class"] == "killed"
        guessed = rec(rows["coldpending"]["run_dir"])
        assert guessed["state"] == "CANCELLED" and guessed["failure"]["class"] == "cancelled", guessed
        assert guessed["failure"].get("inferred") is True  # from the run folder, and said so
    finally:
        cluster("up")


def _trainer_pid(wrapper_pid: int) -> int:
    from orchestrator.job.proctree import command_line, descendants

    return next(p for p in descendants(wrapper_pid) if " -m trainers" in command_line(p))


# ------------------------------------------------------------------------------------------- 6
@pytest.mark.slow
def test_two_node_time_limit_signal_reaches_both_nodes_trainers(lm_orch: Orch) -> None:
    """Defect 6: a 2-node run reaches the warning before its time limit. Every node's launcher
    survives USR1 (no exit 138), the node shims pass it to the trainers on both nodes (each with its
    handler installed), both ranks checkpoint and exit 75, and the run ends TIMEOUT (no attempt
    left: retry.max_attempts=1)."""
    row = submit(lm_orch, QUICKSTART, "--backend", "slurm", "--set", "resources.nodes=2",
                 "--set", "resources.cpus_per_task=1", "--set", "train.max_steps=10000000",
                 "--set", "checkpoint.every=100000", "--set", "eval.every=100000",
                 "--set", "resources.time=00:02:00", "--set", "resources.signal_grace=45",
                 "--set", "retry.max_attempts=1")
    run_dir = Path(row["run_dir"])
    wait_until(lambda: rec(run_dir)["state"] not in ("PENDING", "QUEUED", "RUNNING"), 240, "the warning", run_dir,
               every=2)
    r = rec(run_dir)
    err = (run_dir / "logs" / "stderr-1.log").read_text()
    for node in ("0 (n1)", "1 (n2)"):
        line = next((ln for ln in err.splitlines() if ln.startswith(f"orch node {node}: SIGUSR1")), "")
        assert "(handler)" in line and "none yet" not in line, err[-3000:]
    for rank in (0, 1):  # torchrun's report of each node's worker: the trainer checkpointed and exited 75
        assert f"rank      : {rank} (local_rank: 0)\n  exitcode  : 75" in err, err[-3000:]
    assert "Signals.SIGUSR1" not in err and "exitcode  : -10" not in err, err[-3000:]
    assert r["state"] == "TIMEOUT" and r["attempts"][0]["cause"] == "timeout", r
    assert r["stop_reason"] == "preempted: SIGUSR1"
    assert list(run_dir.glob("ckpt/step-*/COMPLETE")), "no checkpoint after the warning"
