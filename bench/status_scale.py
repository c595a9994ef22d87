"""How fast is `orch status --json` on a big results tree, and does history length matter?

Builds results trees of N runs (mixed states; running ones point at a live process) whose
metrics histories have L lines each, then times `orch status --json` end to end (a subprocess,
Python start-up included) and per run. To keep disk use small the L-line history is written once
per tree and hard-linked into every run folder: each run still has a full file to read.

    python bench/status_scale.py [--runs 10000] [--lines 10 10000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from orchestrator.backends.local.submit import make_job_id  # noqa: E402

STATES = ["COMPLETED"] * 5 + ["FAILED", "CANCELLED", "TIMEOUT", "RUNNING", "QUEUED"]


def build(root: Path, runs: int, lines: int, seed: int = 0, mirror: bool = True) -> None:
    """A tree as orch writes it; `mirror=False` drops the heartbeat's copy of the last evaluation
    (as a custom trainer might), so status must read the history's tail from the end."""
    rng = random.Random(seed)
    shared = root / ".history.jsonl"
    with open(shared, "w") as fh:
        for i in range(lines):
            fh.write(json.dumps({"step": i * 10, "train_loss": 3.0 - i * 1e-4, "val_loss": 3.1 - i * 1e-4, "val_ppl": 22.0}) + "\n")
    alive = make_job_id(os.getpid())
    now = time.time()
    for i in range(runs):
        name = f"exp{i % 50:02d}"
        rid = f"{name}-20261122-0000{i:05d}-{i % 65536:04x}"
        d = root / name / rid
        (d / "eval").mkdir(parents=True)
        state = rng.choice(STATES)
        rec = {"run_id": rid, "name": name, "state": state, "backend": "local", "total_steps": 20000,
               "attempts": [{"n": 1, "backend": "local", "job_id": alive, "started_at": "2026-11-22T00:00:00"}]}
        if state == "COMPLETED":
            (d / "checks.json").write_text(json.dumps({"summary": "3/3", "passed": True}))
            rec["checks"] = {"passed": True, "failing": [], "summary": "3/3"}  # `orch check`'s copy in run.json
        (d / "run.json").write_text(json.dumps(rec))
        beat = {"time": now, "step": 1234, "total_steps": 20000, "train_loss": 2.5, "tokens_per_sec": 12345.0, "eta_s": 600}
        if mirror:
            beat["last_eval"] = {"step": (lines - 1) * 10, "val_loss": 2.1, "val_ppl": 8.2}
        (d / "heartbeat.json").write_text(json.dumps(beat))
        os.link(shared, d / "eval" / "metrics_history.jsonl")


def time_status(root: Path, repeat: int) -> tuple[float, float, int]:
    """(median wall s, median CPU s of the child, runs listed); CPU time is robust to a busy machine."""
    env = {**os.environ, "ORCH_RESULTS": str(root)}
    walls, cpus, count = [], [], 0
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "orchestrator", "status", "--json"], env=env,
                             capture_output=True, text=True, check=True).stdout
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        count = len(json.loads(out))
    return statistics.median(walls), statistics.median(cpus), count


def time_startup(repeat: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        wall, cpu, _ = time_status(Path(d), repeat)
        return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--lines", type=int, nargs="+", default=[10, 10000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-mirror", action="store_true", help="heartbeats without last_eval: status reads each history's tail")
    args = ap.parse_args()
    base, base_cpu = time_startup(args.repeat)
    print(f"orch status --json on an empty tree (start-up): {base:.3f} s wall, {base_cpu:.3f} s CPU; "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results = {}
    for lines in args.lines:
        root = Path(tempfile.mkdtemp(prefix=f"orch-bench-{lines}-"))
        try:
            t0 = time.perf_counter()
            build(root, args.runs, lines, mirror=not args.no_mirror)
            built = time.perf_counter() - t0
            secs, cpu, count = time_status(root, args.repeat)
            assert count == args.runs, (count, args.runs)
            per_run_us = (cpu - base_cpu) / args.runs * 1e6
            results[lines] = per_run_us
            print(f"{args.runs} runs x {lines}-line histories: orch status --json {secs:.3f} s wall, {cpu:.3f} s CPU "
                  f"(median of {args.repeat}; {per_run_us:.1f} us CPU per run above start-up; tree built in {built:.1f} s)")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if len(results) > 1:
        lo, hi = min(results), max(results)
        print(f"per-run cost ratio, {hi}-line vs {lo}-line histories: {results[hi] / results[lo]:.2f}x (1.0 = independent of history length)")


if __name__ == "__main__":
    main()
