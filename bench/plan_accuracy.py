"""How well `orch plan --probe` projects a run's wall time: projected vs measured, side by side.

    python bench/plan_accuracy.py [--probe 50] [--shakespeare-steps 1000] [--shakespeare-data FILE]
                                  [--repeats 2] [--only quickstart|shakespeare]

For jobs/quickstart.yaml and jobs/shakespeare_char_cpu.yaml (its data from ../shared/data, and a
budget reduced to --shakespeare-steps with `--set train.max_steps=N`, the same for plan and run),
each in a fresh results root (so both tokenize, as a first run does):
(a) `orch plan SPEC --probe N --json`: the projected wall time of the whole budget;
(b) `orch submit SPEC --wait`: the real run, measured the way the probe measures its own job, from
    logs/environment-1.json (the trainer starting) to exit.json (the attempt ending).
Each pair runs --repeats times, the order alternating (plan first, then run first), so that a load
that drifts during the benchmark does not favour one side; prints projected, measured and the error
of each pair (target: within 15%) and the median error, plus the end-to-end time of each command.
A benchmark, not a test: on a shared machine, run it when the machine is quiet.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def orch(results: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "ORCH_RESULTS": str(results), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"orch {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res, time.perf_counter() - t0


def case(spec: str, sets: list[str], probe: int, plan_first: bool) -> dict:
    flags = [w for s in sets for w in ("--set", s)]
    with tempfile.TemporaryDirectory(prefix="orch-bench-plan-") as tmp:
        def plan() -> tuple[dict, float]:
            res, seconds = orch(Path(tmp) / "plan", "plan", spec, *flags, "--probe", str(probe), "--json")
            return json.loads(res.stdout)["specs"][0]["runs"][0], seconds

        def real() -> tuple[Path, float]:
            res, seconds = orch(Path(tmp) / "run", "submit", spec, *flags, "--wait", "--json")
            return Path(json.loads(res.stdout)[0]["run_dir"]), seconds

        if plan_first:
            (row, plan_s), (run_dir, run_s) = plan(), real()
        else:
            (run_dir, run_s), (row, plan_s) = real(), plan()
        measured = (run_dir / "exit.json").stat().st_mtime - (run_dir / "logs" / "environment-1.json").stat().st_mtime
        steps = json.loads((run_dir / "run.json").read_text())
    projected = row["projection"]["total_seconds"]
    return {"spec": spec, "sets": sets, "steps": row["projection"]["steps"], "probe": row["probe"],
            "projected_s": projected, "measured_s": measured, "error": projected / measured - 1.0,
            "plan_command_s": plan_s, "run_command_s": run_s, "stop_reason": steps.get("stop_reason")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", type=int, default=50, help="steps of the probe (default 50)")
    ap.add_argument("--shakespeare-steps", type=int, default=1000, help="reduced budget of shakespeare_char_cpu")
    ap.add_argument("--shakespeare-data", type=Path, default=SHAKESPEARE, help=f"default {SHAKESPEARE}")
    ap.add_argument("--repeats", type=int, default=2, help="pairs per spec, alternating which runs first")
    ap.add_argument("--only", choices=["quickstart", "shakespeare"])
    args = ap.parse_args()
    cases = []
    if args.only in (None, "quickstart"):
        cases.append(("jobs/quickstart.yaml", []))
    if args.only in (None, "shakespeare"):
        data = args.shakespeare_data.resolve()
        if not data.is_file():
            print(f"skipping shakespeare_char_cpu: {data} is absent (--shakespeare-data)")
        else:
            cases.append(("jobs/shakespeare_char_cpu.yaml",
                          [f"data.path={data}", f"train.max_steps={args.shakespeare_steps}"]))
    results = [(case(spec, sets, args.probe, plan_first=i % 2 == 0), os.getloadavg()[0])
               for spec, sets in cases for i in range(args.repeats)]
    print(f"{'spec':<32} {'first':>5} {'steps':>6} {'ms/step':>8} {'overhead':>9} {'projected':>10} {'measured':>9} "
          f"{'error':>7}  load  (plan cmd, run cmd)")
    for i, (r, load) in enumerate(results):
        print(f"{r['spec']:<32} {'plan' if i % args.repeats % 2 == 0 else 'run':>5} {r['steps']:>6} "
              f"{r['probe']['step_time'] * 1e3:>8.1f} {r['probe']['overhead_seconds']:>8.1f}s "
              f"{r['projected_s']:>9.1f}s {r['measured_s']:>8.1f}s {r['error']:>+7.1%}  {load:>4.1f}  "
              f"({r['plan_command_s']:.0f} s, {r['run_command_s']:.0f} s)")
    for spec, _ in cases:
        errors = [r["error"] for r, _ in results if r["spec"] == spec]
        print(f"{spec}: median error {statistics.median(errors):+.1%} over {len(errors)} pair(s) (target within 15%)")
    print(f"{os.cpu_count()} CPUs; the load column is the 1-minute load average after each pair")


if __name__ == "__main__":
    main()
