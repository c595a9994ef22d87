"""How fast is `orch status --json` on a big results tree, cold and with the run index warm, and
does history length matter?

Builds results trees of N runs (mostly finished in mixed states, 100 active ones pointing at a live
process) whose metrics histories have L lines each, then times `orch status --json` end to end (a
subprocess, Python start-up included): cold (no `.index`: every run folder is read, and the index
is written) and warm (the index answers for finished runs whose run.json is unchanged). The warm
output must equal the cold one (a full re-read) but for the heartbeat ages, which move with the
clock: the active runs' states in particular. To keep disk use small the L-line history is written
once per tree and hard-linked into every run folder: each run still has a full file to read.

    python bench/status_scale.py [--runs 10000 100000] [--lines 10 10000] [--repeat 3]

History lengths beyond the first are measured on the smallest tree only (a 100,000-run tree per
length costs minutes to build and says nothing new).
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

FINISHED = ["COMPLETED"] * 6 + ["FAILED", "CANCELLED", "TIMEOUT"]
ACTIVE = ["RUNNING", "QUEUED"]


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def build(root: Path, runs: int, lines: int, seed: int = 0, mirror: bool = True, active: int = 100) -> None:
    """A tree as orch writes it (minimal valid files, written directly: 100,000 folders in about a
    minute); `mirror=False` drops the heartbeat's copy of the last evaluation (as a custom trainer
    might), so status must read the history's tail from the end. `active` runs are RUNNING or
    QUEUED with a live job; the others finished."""
    rng = random.Random(seed)
    shared = root / ".history.jsonl"
    with open(shared, "w") as fh:
        for i in range(lines):
            fh.write(json.dumps({"step": i * 10, "train_loss": 3.0 - i * 1e-4, "val_loss": 3.1 - i * 1e-4, "val_ppl": 22.0}) + "\n")
    alive = make_job_id(os.getpid())
    now = time.time()
    live = set(rng.sample(range(runs), min(active, runs)))
    for i in range(runs):
        name = f"exp{i % 50:02d}"
        rid = f"{name}-20261122-0000{i:06d}-{i % 65536:04x}"
        d = os.path.join(root, name, rid)
        os.makedirs(os.path.join(d, "eval"))
        state = rng.choice(ACTIVE) if i in live else rng.choice(FINISHED)
        rec = {"run_id": rid, "name": name, "state": state, "backend": "local", "total_steps": 20000,
               "attempts": [{"n": 1, "backend": "local", "job_id": alive, "started_at": "2026-11-22T00:00:00"}]}
        if state == "COMPLETED":
            _write(os.path.join(d, "checks.json"), json.dumps({"summary": "3/3", "passed": True}))
            rec["checks"] = {"passed": True, "failing": [], "summary": "3/3"}  # `orch check`'s copy in run.json
        _write(os.path.join(d, "run.json"), json.dumps(rec))
        beat = {"time": now, "step": 1234, "total_steps": 20000, "train_loss": 2.5, "tokens_per_sec": 12345.0, "eta_s": 600}
        if mirror:
            beat["last_eval"] = {"step": (lines - 1) * 10, "val_loss": 2.1, "val_ppl": 8.2}
        _write(os.path.join(d, "heartbeat.json"), json.dumps(beat))
        os.link(shared, os.path.join(d, "eval", "metrics_history.jsonl"))


def status(root: Path) -> tuple[float, float, list[dict]]:
    """One `orch status --json`: (wall s, CPU s of the child, its rows); CPU time is robust to a busy machine."""
    env = {**os.environ, "ORCH_RESULTS": str(root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "orchestrator", "status", "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, json.loads(out)


def time_status(root: Path, repeat: int, cold: bool) -> tuple[float, float, list[dict]]:
    """Medians of `repeat` calls (cold: the index removed before each); the last call's rows."""
    walls, cpus, rows = [], [], []
    for _ in range(repeat):
        if cold:
            shutil.rmtree(root / ".index", ignore_errors=True)
        wall, cpu, rows = status(root)
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus), rows


def timeless(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "heartbeat_age_s"} for r in rows]


def byte_compile() -> None:
    """orch as installed: byte-compiled. With PYTHONDONTWRITEBYTECODE set (as on this machine) every
    call would otherwise compile the modules changed since their last .pyc: ~30 ms no user pays."""
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "orchestrator"), quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--lines", type=int, nargs="+", default=[10, 10000])
    ap.add_argument("--active", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-mirror", action="store_true", help="heartbeats without last_eval: status reads each history's tail")
    ap.add_argument("--dir", default=None, help="build the trees there (default: the system temp folder; "
                    "/dev/shm builds 100,000 run folders in a minute where a virtual disk takes ten)")
    args = ap.parse_args()
    byte_compile()
    with tempfile.TemporaryDirectory() as empty:
        base, base_cpu, _ = time_status(Path(empty), args.repeat, cold=False)
    print(f"orch status --json on an empty tree (start-up): {base:.3f} s wall, {base_cpu:.3f} s CPU; "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'runs':>7} {'lines':>6}  {'cold wall':>9} {'cold CPU':>8} {'us/run':>7}  {'warm wall':>9} {'warm CPU':>8} "
          f"{'us/run':>7}  same as a full re-read")
    per_run: dict[tuple[int, str], dict[int, float]] = {}
    smallest = min(args.runs)
    for runs in args.runs:
        for lines in (args.lines if runs == smallest else args.lines[:1]):
            root = Path(tempfile.mkdtemp(prefix=f"orch-bench-{runs}-{lines}-", dir=args.dir))
            try:
                t0 = time.perf_counter()
                build(root, runs, lines, mirror=not args.no_mirror, active=args.active)
                built = time.perf_counter() - t0
                time.sleep(1.2)  # past the index's settle time: every finished run can be indexed
                cold, cold_cpu, full = time_status(root, 1 if runs > smallest else args.repeat, cold=True)
                warm, warm_cpu, rows = time_status(root, args.repeat, cold=False)
                assert len(full) == len(rows) == runs, (len(full), len(rows), runs)
                same = timeless(full) == timeless(rows)
                act = [(r["run_id"], r["state"]) for r in rows if r["state"] in ("RUNNING", "QUEUED", "STALLED")]
                act_full = [(r["run_id"], r["state"]) for r in full if r["state"] in ("RUNNING", "QUEUED", "STALLED")]
                us = {k: (c - base_cpu) / runs * 1e6 for k, c in (("cold", cold_cpu), ("warm", warm_cpu))}
                for k, v in us.items():
                    per_run.setdefault((runs, k), {})[lines] = v
                print(f"{runs:>7} {lines:>6}  {cold:>8.2f}s {cold_cpu:>7.2f}s {us['cold']:>7.1f}  {warm:>8.2f}s "
                      f"{warm_cpu:>7.2f}s {us['warm']:>7.1f}  {'yes' if same else 'NO'} "
                      f"({len(act)} active, states {'identical' if act == act_full else 'DIFFER'}; built in {built:.0f} s)")
            finally:
                shutil.rmtree(root, ignore_errors=True)
    for (runs, kind), by_lines in sorted(per_run.items()):
        if len(by_lines) > 1:
            lo, hi = min(by_lines), max(by_lines)
            print(f"{runs} runs, {kind}: per-run cost ratio, {hi}-line vs {lo}-line histories: "
                  f"{by_lines[hi] / by_lines[lo]:.2f}x (1.0 = independent of history length)")
    print(f"(median of {args.repeat} calls; a 'cold' call on a tree larger than the smallest is timed once; "
          "us/run: CPU above start-up per run)")


if __name__ == "__main__":
    main()
