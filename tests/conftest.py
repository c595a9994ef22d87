"""Shared fixtures: run the real `orch` CLI as a subprocess against a temporary results root."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


class Orch:
    """Runs `python -m orchestrator ...` with ORCH_RESULTS pointing at a temp results root."""

    def __init__(self, results: Path, cwd: Path) -> None:
        self.results = results
        self.cwd = cwd
        self.env = {**os.environ, "ORCH_RESULTS": str(results), "PYTHONUNBUFFERED": "1",
                    "ORCH_KILL_WAIT": "5", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false"}

    def __call__(self, *args: str, check: bool | int = True, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=self.cwd, env=self.env,
                             capture_output=True, text=True, timeout=timeout, **kw)
        expected = 0 if check is True else check
        if check is not False and res.returncode != expected:
            raise AssertionError(f"orch {' '.join(args)} exited {res.returncode}, expected {expected}\n"
                                 f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}")
        return res

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self(*args, "--json", **kw).stdout)


def wait_until(pred: Callable[[], Any], timeout: float = 180, what: str = "condition",
               run_dir: Optional[Path] = None, every: float = 0.3) -> Any:
    """Poll `pred` until it is truthy; on time-out, show the run folder's record and log tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    extra = ""
    if run_dir is not None:
        run_dir = Path(run_dir)
        extra = (run_dir / "run.json").read_text(errors="replace")[-3000:] if (run_dir / "run.json").exists() else ""
        for log in sorted((run_dir / "logs").glob("std*.log")):
            extra += f"\n--- {log.name}\n" + log.read_text(errors="replace")[-2000:]
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{extra}")


@pytest.fixture
def orch(tmp_path: Path) -> Orch:
    results = tmp_path / "results"
    results.mkdir()
    return Orch(results, REPO)


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent")
    return SHARED
