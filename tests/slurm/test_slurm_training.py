"""The real `lm` trainer on the real local Slurm cluster: quickstart, time-limit requeue, 2 nodes.

Slow (minutes on 2 cores): each job starts torch. These are the issue's end-to-end checks.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, Orch, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

QUICKSTART = str(REPO / "jobs" / "quickstart.yaml")


def run_json(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def history(run_dir: str) -> list[dict]:
    path = Path(run_dir) / "eval" / "metrics_history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def diagnostics(run_dir: str) -> dict[int, float]:
    path = Path(run_dir) / "logs" / "train_diagnostics.jsonl"
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


def test_quickstart_completes(lm_orch: Orch) -> None:
    rows = lm_orch.json("submit", QUICKSTART, "--backend", "slurm", "--wait", timeout=900)
    status = {r["run_id"]: r for r in lm_orch.json("status")}
    assert status[rows[0]["run_id"]]["state"] == "COMPLETED"
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State,ExitCode", "-j", rows[0]["job_id"]],
                         capture_output=True, text=True).stdout
    assert out.strip() == "COMPLETED|0:0"


def test_time_limit_signal_checkpoint_requeue_resume(lm_orch: Orch) -> None:
    """USR1 60 s before a 2 min limit: checkpoint, exit 75, `scontrol requeue`, resume, complete.

    The budget is 70 s of training summed over attempts: the first attempt gets the warning after at
    most 60 s (start-up included), so it cannot finish, however fast the machine is.
    """
    rows = lm_orch.json(
        "submit", QUICKSTART, "--backend", "slurm",
        "--set", "train.max_steps=10000000", "--set", "train.max_time=70", "--set", "eval.every=50",
        "--set", "checkpoint.every=100000",
        "--set", "resources.time=00:02:00", "--set", "resources.signal_grace=60",
        "--set", "retry.max_attempts=3", timeout=120,
    )
    run_dir, job_id = rows[0]["run_dir"], rows[0]["job_id"]

    def requeued() -> bool:
        atts = run_json(run_dir).get("attempts", [])
        return bool(atts and atts[0].get("ended_at"))

    wait_until(requeued, 240, "the first attempt to end after the warning signal")
    first = run_json(run_dir)["attempts"][0]
    assert first["exit_code"] == 75 and first["cause"] == "timeout", first
    # The requeued job waits out BeginTime; give it time to finish, then start it now.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=00:10:00", "StartTime=now"], check=True)
    wait_until(lambda: run_json(run_dir)["state"] in ("COMPLETED", "FAILED", "TIMEOUT"), 600, "the second attempt")
    rec = run_json(run_dir)
    assert rec["state"] == "COMPLETED", rec
    assert len(rec["attempts"]) == 2
    assert rec["attempts"][1]["restart_count"] == 1 and rec["attempts"][1]["job_id"] == job_id
    resumed = re.search(r"training from step (\d+)", (Path(run_dir) / "logs" / "stdout-2.log").read_text())
    assert resumed and int(resumed.group(1)) > 0  # continued from the checkpoint, not from step 0
    steps = [h["step"] for h in history(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] > int(resumed.group(1))
    assert json.loads((Path(run_dir) / "eval" / "metrics.json").read_text())["stop_reason"] == "max_time"
    status = {r["run_id"]: r for r in lm_orch.json("status")}
    assert status[rows[0]["run_id"]]["state"] == "COMPLETED"


def test_two_node_run_matches_one_process(lm_orch: Orch) -> None:
    """2 nodes x 1 process (gloo over `accelerate launch` per node) vs 1 process, same global batch."""
    common = ["--backend", "slurm", "--set", "train.max_steps=40", "--set", "eval.every=20", "--set", "train.log_every=1",
              "--set", "checkpoint.every=1000", "--set", "resources.cpus_per_task=1"]
    two = lm_orch.json("submit", QUICKSTART, *common, "--set", "resources.nodes=2", timeout=120)
    one = lm_orch.json("submit", QUICKSTART, *common, "--set", "train.batch_size=32", "--wait", timeout=900)
    lm_orch("status")  # refresh
    wait_until(lambda: run_json(two[0]["run_dir"])["state"] not in ("QUEUED", "RUNNING", "PENDING"), 900, "the 2-node run")
    assert run_json(two[0]["run_dir"])["state"] == "COMPLETED"
    assert run_json(one[0]["run_dir"])["state"] == "COMPLETED"
    nodes = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "NodeList,NNodes", "-j", two[0]["job_id"]],
                           capture_output=True, text=True).stdout.strip()
    assert nodes == "n[1-2]|2", nodes
    out = (Path(two[0]["run_dir"]) / "logs" / "stdout-1.log").read_text()
    assert "2 process(es)" in out
    # The training loss, step by step: the same global batch gives the same curve. (Validation
    # loss is an estimate on sampled batches whose split across processes depends on the world
    # size, so it is compared loosely.)
    a, b = diagnostics(two[0]["run_dir"]), diagnostics(one[0]["run_dir"])
    assert sorted(a) == sorted(b) == list(range(1, 41))
    worst = max(abs(a[s] - b[s]) for s in a)
    assert worst <= 2e-5, f"2-node losses differ from 1-process by {worst}"
    va = json.loads((Path(two[0]["run_dir"]) / "eval" / "metrics.json").read_text())
    vb = json.loads((Path(one[0]["run_dir"]) / "eval" / "metrics.json").read_text())
    assert va["world_size"] == 2 and va["tokens_seen"] == vb["tokens_seen"]
    assert va["final"]["val_loss"] == pytest.approx(vb["final"]["val_loss"], abs=0.01)
