"""How long does one `orch monitor --once` pass take on a big results tree, cold and with the run
index warm?

Builds results trees of N runs: mostly finished ones that earlier passes handled (the monitor's
marker in run.json), 100 active ones (RUNNING or QUEUED, a live local job, a fresh heartbeat) and 10
failed ones whose spec retries their failure class with an hour's back-off (each pass looks at them
again: `retry_scheduled` once, then nothing). Files are minimal and written directly. Times `orch
monitor --once --json` end to end (a subprocess, Python start-up included): the first pass (cold:
no `.index`, every run.json is read; it notifies the 10 failures and schedules their retries) and
later passes (warm: the index answers for finished runs already handled).

    python bench/monitor_scale.py [--runs 10000 100000] [--repeat 3]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from orchestrator.backends.local.submit import make_job_id  # noqa: E402
from orchestrator.spec.schema import spec_to_yaml  # noqa: E402
from status_scale import ACTIVE, FINISHED, _write, byte_compile  # noqa: E402  (the same tree generator's pieces)
from trainers.lm.config import LMSpec  # noqa: E402

TRACEBACK = 'Traceback (most recent call last):\n  File "/x/train.py", line 3, in f\n    g()\nKeyError: \'x\'\n'


def build(root: Path, runs: int, active: int = 100, failing: int = 10, seed: int = 0) -> None:
    rng = random.Random(seed)
    alive = make_job_id(os.getpid())
    now = time.time()
    ended = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now - 60))
    picked = rng.sample(range(runs), min(runs, active + failing))
    live, retried = set(picked[:active]), set(picked[active:])
    for i in range(runs):
        name = f"exp{i % 50:02d}"
        rid = f"{name}-20261122-0000{i:06d}-{i % 65536:04x}"
        d = os.path.join(root, name, rid)
        os.makedirs(os.path.join(d, "logs"))
        att = {"n": 1, "backend": "local", "job_id": alive if i in live else "1@1",  # 1@1: a job long gone
               "started_at": "2026-11-22T00:00:00+00:00"}
        rec = {"run_id": rid, "name": name, "backend": "local", "total_steps": 20000, "stall_after": 1e9,
               "attempts": [att]}
        if i in live:
            rec["state"] = rng.choice(ACTIVE)
            _write(os.path.join(d, "heartbeat.json"), json.dumps({"time": now, "step": 1234, "total_steps": 20000}))
        elif i in retried:
            rec.update(state="FAILED", exit_code=1)
            att.update(ended_at=ended, exit_code=1, state="FAILED")
            _write(os.path.join(d, "spec.yaml"), spec_to_yaml(LMSpec(name=name, retry={"on": ["user_error"], "backoff": "1h"})))
            _write(os.path.join(d, "logs", "stderr-1.log"), TRACEBACK)
        else:
            state = rng.choice(FINISHED)
            rec["state"] = state
            att.update(ended_at=ended, state=state)
            if state != "COMPLETED":
                rec["failure"] = {"class": "user_error", "summary": "KeyError", "attempt": 1, "evidence": []}
            rec["monitor"] = {"done_attempt": 1, "done_state": state, "notified_attempt": 1}
        _write(os.path.join(d, "run.json"), json.dumps(rec))


def one_pass(root: Path) -> tuple[float, float, list[dict]]:
    """(wall s, CPU s of the child, the pass's events)."""
    env = {**os.environ, "ORCH_RESULTS": str(root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "orchestrator", "monitor", "--once", "--json"], env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"orch monitor --once exited {res.returncode}: {res.stderr[-2000:]}")
    events = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--repeat", type=int, default=3, help="warm passes timed (median)")
    ap.add_argument("--dir", default=None, help="build the trees there (default: the system temp folder; "
                    "/dev/shm builds 100,000 run folders in a minute where a virtual disk takes ten)")
    args = ap.parse_args()
    byte_compile()
    with tempfile.TemporaryDirectory() as empty:
        base, base_cpu, _ = one_pass(Path(empty))
    print(f"orch monitor --once on an empty tree (start-up): {base:.3f} s wall, {base_cpu:.3f} s CPU; "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'runs':>7}  {'cold wall':>9} {'cold CPU':>8} {'events':>6}  {'warm wall':>9} {'warm CPU':>8} {'us/run':>7} "
          f"{'events':>6}")
    for runs in args.runs:
        root = Path(tempfile.mkdtemp(prefix=f"orch-monitor-bench-{runs}-", dir=args.dir))
        try:
            t0 = time.perf_counter()
            build(root, runs)
            built = time.perf_counter() - t0
            time.sleep(1.2)  # past the index's settle time
            cold, cold_cpu, first = one_pass(root)
            time.sleep(1.2)  # the 10 retries just scheduled settle too
            warm = [one_pass(root) for _ in range(args.repeat)]
            wall = statistics.median(w for w, _, _ in warm)
            cpu = statistics.median(c for _, c, _ in warm)
            later = sum(len(e) for _, _, e in warm)
            kinds = sorted({e["event"] for e in first})
            print(f"{runs:>7}  {cold:>8.2f}s {cold_cpu:>7.2f}s {len(first):>6}  {wall:>8.2f}s {cpu:>7.2f}s "
                  f"{(cpu - base_cpu) / runs * 1e6:>7.1f} {later:>6}   (first pass: {', '.join(kinds)}; "
                  f"built in {built:.0f} s)")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"(warm: median of {args.repeat} passes after the first; us/run: CPU above start-up per run; "
          "events: what the passes reported)")


if __name__ == "__main__":
    main()
