"""`orch monitor` against real failing jobs on the real Slurm cluster (issue 5 on SLURM)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Orch, wait_until

pytestmark = pytest.mark.slurm

FAULTY = "tests.fixtures.faulty:FaultyTrainer"


def spec(tmp: Path, name: str, **over: Any) -> Path:
    data: dict[str, Any] = {
        "name": name, "trainer": FAULTY, "backend": "slurm", "seed": 3,
        "train": {"max_steps": 60, "log_every": 2, "lr": 0.05, "min_lr": 0.0, "device": "cpu"},
        "eval": {"every": 10}, "checkpoint": {"every": 10, "keep_last": 2, "hf_format": False},
        "resources": {"cpus_per_task": 1, "mem": "1G", "time": "00:05:00"},
        "retry": {"max_attempts": 2, "on": ["node_fail", "killed"], "backoff": 0},
        "env": {"OMP_NUM_THREADS": "1"}, "config": {"fail": "none", "step_sleep": 0.1},
    }
    for key, value in over.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rec(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


def test_data_error_on_slurm_is_classified_and_not_retried(lm_orch: Orch, tmp_path: Path) -> None:
    corrupt = tmp_path / "corpus.txt"
    corrupt.write_bytes(b"good line\n" + bytes(range(128, 256)) * 8)
    path = spec(tmp_path, "sdata", config={"fail": "data_error", "data_file": str(corrupt)})
    [row] = lm_orch.json("submit", str(path), "--wait", check=1, timeout=300)
    run_dir = Path(row["run_dir"])
    res = lm_orch("monitor", "--once", timeout=120)
    r = rec(run_dir)
    assert r["state"] == "FAILED" and r["failure"]["class"] == "data_error", r.get("failure")
    assert "RETRIED" not in res.stdout and len(r["attempts"]) == 1
    assert "UnicodeDecodeError" in res.stdout or "UnicodeDecodeError" in json.dumps(r["failure"])


def test_sigkill_on_slurm_is_resubmitted_and_finishes_from_its_checkpoint(lm_orch: Orch, tmp_path: Path) -> None:
    [row] = lm_orch.json("submit", str(spec(tmp_path, "skill")), timeout=120)
    run_dir = Path(row["run_dir"])
    wait_until(lambda: list((run_dir / "ckpt").glob("step-*/COMPLETE")), 240, "a first checkpoint", run_dir)
    wrapper_pid = rec(run_dir)["attempts"][-1]["pid"]
    os.kill(wrapper_pid, signal.SIGKILL)  # the batch step dies without a word (a node failure stand-in)
    wait_until(lambda: not os.path.exists(f"/proc/{wrapper_pid}"), 30, "the wrapper to die")
    wait_until(lambda: "RETRIED" in lm_orch("monitor", "--once", timeout=120).stdout, 120, "monitor to resubmit", run_dir, every=3)
    r = rec(run_dir)
    assert len(r["attempts"]) == 2 and r["attempts"][0].get("failure_class") in ("node_fail", "killed"), r["attempts"]
    wait_until(lambda: rec(run_dir)["state"] in ("COMPLETED", "FAILED"), 300, "the second attempt", run_dir, every=2)
    assert rec(run_dir)["state"] == "COMPLETED"
    assert "resumed from step-" in (run_dir / "logs" / "stdout-2.log").read_text()
