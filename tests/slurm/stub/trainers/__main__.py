"""A stand-in trainer for scheduler tests: `python -m trainers RUN_DIR` with the real contract.

The SLURM tests about arrays, throttles, pipelines and cancel are about the scheduler, not about
training; starting torch for each of them would cost minutes on a 2-core machine. This stub keeps
the trainer's contract (exit 0 when done, 75 after a signal once its "checkpoint" is saved,
resume from that checkpoint) and is driven by the spec's `config:` section (schema: stub_trainer.py,
selected with `trainer: stub_trainer:TRAINER`):
  config: {seconds: 3, exit_code: 0}
Tests run `orch` from tests/slurm/stub, so the job's `cd` puts this package first on sys.path.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml


def main() -> int:
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ["ORCH_RUN_DIR"])
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    cfg = spec.get("config") or {}
    stop: list[int] = []
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: stop.append(s))
    ckpt = run_dir / "ckpt" / "stub-progress.json"
    done = json.loads(ckpt.read_text())["seconds_done"] if ckpt.exists() else 0.0
    total = float(cfg.get("seconds", 1))
    print(json.dumps({"event": "start", "attempt": os.environ.get("ORCH_ATTEMPT"), "resumed_from": done,
                      "node": os.environ.get("SLURMD_NODENAME"), "env_probe": os.environ.get("ORCH_PROBE"),
                      "restart_count": os.environ.get("SLURM_RESTART_COUNT")}), flush=True)
    start = time.monotonic()
    while done + (time.monotonic() - start) < total:
        if stop:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_text(json.dumps({"seconds_done": done + time.monotonic() - start}))
            print(json.dumps({"event": "checkpointed", "signal": stop[0]}), flush=True)
            return 75
        time.sleep(0.1)
    print(json.dumps({"event": "done"}), flush=True)
    return int(cfg.get("exit_code", 0))


if __name__ == "__main__":
    sys.exit(main())
