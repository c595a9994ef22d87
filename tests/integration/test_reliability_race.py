"""`orch resume` racing `orch monitor` (and a second `orch resume`), with real processes.

Three runs of one name fail on their first attempt with a class their `retry:` allows; then five
`orch monitor --once` and one `orch resume NAME` (or two `orch resume NAME`) start at the same
moment, as `(for i in 1 2 3 4 5; do orch monitor --once & done; orch resume NAME; wait)` does.
Whoever wins, each run must get exactly one new attempt, the job the record names must be the
one that trains (and the only wrapper/trainer of that run alive), `orch status` must tell the
truth, `orch cancel` must stop whatever trains, and the loser must be told so (exit 1, no traceback).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from orchestrator.backends.local.submit import job_alive, parse_job_id
from orchestrator.record.atomicio import read_json, read_jsonl
from tests.conftest import Orch, wait_until

FAULTY = "tests.fixtures.faulty:FaultyTrainer"


def failing_runs(orch: Orch, tmp_path: Path, name: str, steps: int) -> list[Path]:
    """Three runs of `name` whose first attempt fails (user_error, which retry.on allows)."""
    spec = {
        "name": name, "trainer": FAULTY, "seed": 3,
        "train": {"max_steps": steps, "log_every": 2, "lr": 0.05, "min_lr": 0.0, "device": "cpu"},
        "eval": {"every": 10, "at_end": True},
        "checkpoint": {"every": 10, "keep_last": 2, "hf_format": False},
        "resources": {"time": "00:10:00"},
        "retry": {"on": ["user_error"], "max_attempts": 3, "backoff": 0},
        "env": {"OMP_NUM_THREADS": "1"},
        "config": {"fail": "user_error", "at_step": 2, "fail_attempts": [1], "step_sleep": 0.25},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runs = [Path(orch.json("submit", str(path))[0]["run_dir"]) for _ in range(3)]
    for run_dir in runs:
        wait_until(lambda: rec(run_dir).get("state") == "FAILED", 180, f"{run_dir.name} to fail", run_dir)
    return runs


def rec(run_dir: Path) -> dict[str, Any]:
    data = read_json(run_dir / "run.json")
    assert isinstance(data, dict), f"{run_dir}/run.json is damaged"
    return data


def processes_of(run_dir: Path) -> list[tuple[int, int, str]]:
    """(pid, session id, command line) of every live process whose command line names the run folder."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if str(run_dir) in cmd and fields[0] not in ("Z", "X"):
            out.append((int(entry), int(fields[3]), cmd))
    return out


def start(orch: Orch, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=orch.cwd, env=orch.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_one_new_attempt_that_trains(orch: Orch, runs: list[Path]) -> None:
    """Each run: two attempts; the second's job is alive, started by the record's job, and alone."""
    for run_dir in runs:
        r = rec(run_dir)
        assert [a["n"] for a in r["attempts"]] == [1, 2], r["attempts"]
        assert len(r.get("resumes") or []) == 1, r.get("resumes")
    for run_dir in runs:
        wait_until(lambda: rec(run_dir)["state"] == "RUNNING" and (read_json(run_dir / "heartbeat.json") or {})
                   .get("phase") == "train", 180, f"{run_dir.name}'s second attempt to train", run_dir)
        att = rec(run_dir)["attempts"][-1]
        job_pid, _ = parse_job_id(att["job_id"])
        assert job_alive(att["job_id"]) and att["pid"] == job_pid, att  # the claimed job is the recorded one
        procs = processes_of(run_dir)
        wrappers = [p for p in procs if "orchestrator.job" in p[2]]
        trainers = [p for p in procs if "-m trainers" in p[2]]
        assert [p[0] for p in wrappers] == [job_pid], procs  # one wrapper: the recorded job
        assert len(trainers) == 1 and trainers[0][1] == job_pid, procs  # one trainer, in that job's session
        assert (read_json(run_dir / "heartbeat.json") or {}).get("pid") == trainers[0][0]
        assert {p[1] for p in procs} == {job_pid}, procs  # nothing of this run outside the job
    rows = {row["run_id"]: row for row in orch.json("status", runs[0].parent.name)}
    assert {rows[r.name]["state"] for r in runs} == {"RUNNING"} and {rows[r.name]["attempts"] for r in runs} == {2}


def assert_cancel_stops_and_others_complete(orch: Orch, runs: list[Path]) -> None:
    victim, others = runs[0], runs[1:]
    job_pid = parse_job_id(rec(victim)["attempts"][-1]["job_id"])[0]
    res = orch("cancel", victim.name)
    assert f"{victim.name}: cancelled (local job {job_pid}@" in res.stdout, res.stdout
    wait_until(lambda: not processes_of(victim), 30, "every process of the cancelled run to end")
    for run_dir in others:
        wait_until(lambda: rec(run_dir)["state"] in ("COMPLETED", "FAILED"), 300, f"{run_dir.name} to end", run_dir)
    rows = {row["run_id"]: row for row in orch.json("status", victim.parent.name)}
    assert rows[victim.name]["state"] == "CANCELLED" and rows[victim.name]["failure"] == "cancelled"
    for run_dir in others:
        row = rows[run_dir.name]
        assert row["state"] == "COMPLETED" and row["attempts"] == 2, row
        assert row["failure"] is None and row["reason"] is None  # attempt 1's failure is not the run's note
        diag = read_jsonl(run_dir / "logs" / "train_diagnostics.jsonl")
        assert len({d["pid"] for d in diag if d.get("attempt") == 2}) == 1  # one trainer trained attempt 2
    table = orch("status", victim.parent.name).stdout
    assert table.count("COMPLETED") == 2 and table.count("CANCELLED") == 1, table


def test_resume_racing_five_monitors_opens_one_attempt_per_run(orch: Orch, tmp_path: Path) -> None:
    runs = failing_runs(orch, tmp_path, "race", steps=160)
    monitors = [start(orch, "monitor", "--once") for _ in range(5)]
    resume = start(orch, "resume", "race")
    outs = [p.communicate(timeout=180) for p in monitors]
    r_out, r_err = resume.communicate(timeout=180)
    assert [p.returncode for p in monitors] == [0] * 5, outs
    assert not any("Traceback" in e for _, e in outs), outs
    assert "Traceback" not in r_err, r_err
    won_by_resume = {line.split(":")[0] for line in r_out.splitlines() if "resumed as attempt 2" in line}
    lost_by_resume = {line.split(":")[0] for line in r_err.splitlines() if ": not resumed: " in line}
    assert won_by_resume | lost_by_resume == {r.name for r in runs}, (r_out, r_err)
    assert resume.returncode == (1 if lost_by_resume else 0), (resume.returncode, r_err)
    events = read_jsonl(orch.results / "events.jsonl")
    retried = [e["run_id"] for e in events if e["event"] == "retried"]
    assert sorted(retried) == sorted(lost_by_resume), (retried, r_out, r_err)  # the monitor got exactly the rest
    for run_dir in runs:
        how = rec(run_dir)["resumes"][0]["reason"]
        assert how.startswith("orch resume") == (run_dir.name in won_by_resume), how
    assert_one_new_attempt_that_trains(orch, runs)
    for _ in range(2):  # later passes change nothing while the second attempts train
        orch("monitor", "--once")
    assert [e["run_id"] for e in read_jsonl(orch.results / "events.jsonl") if e["event"] == "retried"] == retried
    assert_cancel_stops_and_others_complete(orch, runs)


def test_two_resumes_racing_open_one_attempt_per_run(orch: Orch, tmp_path: Path) -> None:
    runs = failing_runs(orch, tmp_path, "twice", steps=160)
    first, second = start(orch, "resume", "twice"), start(orch, "resume", "twice")
    results = [(p, *p.communicate(timeout=180)) for p in (first, second)]
    won: list[str] = []
    for proc, out, err in results:
        assert "Traceback" not in err, err
        mine = [line.split(":")[0] for line in out.splitlines() if "resumed as attempt 2" in line]
        lost = [line.split(":")[0] for line in err.splitlines() if ": not resumed: " in line]
        assert sorted(mine + lost) == sorted(r.name for r in runs), (out, err)
        assert proc.returncode == (1 if lost else 0), (proc.returncode, err)
        assert all("someone else" in line or "cannot resubmit" in line or "no longer current" in line
                   for line in err.splitlines() if ": not resumed: " in line), err
        won += mine
    assert sorted(won) == sorted(r.name for r in runs)  # each run resumed exactly once, by one of them
    assert_one_new_attempt_that_trains(orch, runs)
    res = orch("cancel", "twice")
    assert res.stdout.count("cancelled (local job") == 3, res.stdout
    for run_dir in runs:
        wait_until(lambda: not processes_of(run_dir), 30, f"every process of {run_dir.name} to end")
        assert rec(run_dir)["state"] == "CANCELLED"
    assert {row["state"] for row in orch.json("status", "twice")} == {"CANCELLED"}
