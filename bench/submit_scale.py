"""Benchmark: a 1,000-point sweep on the SLURM backend, dry run and real submission.

Prints wall times and how many scheduler commands each step ran. Targets (issue 4): under
3 s, and at most ceil(1000 / MaxArraySize) sbatch calls. The real submission uses the local
test cluster (tests/slurm/cluster.sh up) with `--hold` from a private cluster profile, so the
1,000 jobs are queued for real but never run; they are cancelled at the end.

    python bench/submit_scale.py [--points 1000]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = """\
name: scale
trainer: lm
backend: slurm
resources: {{cpus_per_task: 1, mem: 100M, time: "00:05:00"}}
retry: {{max_attempts: 1}}
sweep: {{grid: {{seed: {seeds}}}, max_parallel: 50}}
"""


def orch(*args: str) -> tuple[float, int, str]:
    """Run the CLI in this process (so SlurmCLI's call counter sees its calls): seconds, rc, stdout."""
    from orchestrator.cli import main

    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        rc = main(list(args))
    return time.perf_counter() - t0, rc, out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    if not shutil.which("sbatch") or "is UP" not in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout:
        print("no Slurm cluster answers: run `tests/slurm/cluster.sh up` first", file=sys.stderr)
        return 2
    from orchestrator.backends.slurm.cli import SlurmCLI

    tmp = Path(tempfile.mkdtemp(prefix="orch-submit-scale-"))
    (tmp / "cluster.yaml").write_text("sbatch: ['--hold']\nquery_interval: 0\n")
    os.environ.update(ORCH_RESULTS=str(tmp / "results"), ORCH_CLUSTER=str(tmp / "cluster.yaml"),
                      ORCH_SLURM_CACHE_DIR=str(tmp / "cache"))
    spec = tmp / "scale.yaml"
    spec.write_text(SPEC.format(seeds=json.dumps(list(range(args.points)))))
    os.chdir(REPO / "tests" / "slurm" / "stub")
    max_array = int(next(line.split("=")[1] for line in subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True).stdout.splitlines()
        if line.startswith("MaxArraySize")))

    SlurmCLI.calls.clear()
    dry_s, rc, _ = orch("submit", str(spec), "--dry-run")
    assert rc == 0
    dry_calls = dict(SlurmCLI.calls)

    SlurmCLI.calls.clear()
    sub_s, rc, out = orch("submit", str(spec), "--json")
    assert rc == 0
    sub_calls = dict(SlurmCLI.calls)
    rows = json.loads(out)
    arrays = sorted({r["job_id"].split("_")[0] for r in rows}, key=int)

    SlurmCLI.calls.clear()
    status_s, rc, out = orch("status", "--json")
    status_calls = dict(SlurmCLI.calls)
    states = {r["state"] for r in json.loads(out)}

    subprocess.run(["scancel", *arrays], check=False)
    shutil.rmtree(tmp, ignore_errors=True)

    limit = math.ceil(args.points / max_array)
    print(f"sweep of {args.points} points, MaxArraySize {max_array}")
    print(f"  orch submit --dry-run : {dry_s:6.2f} s   scheduler calls {dry_calls or 0}")
    print(f"  orch submit (real)    : {sub_s:6.2f} s   scheduler calls {sub_calls}  "
          f"-> {len(rows)} runs in {len(arrays)} array(s)")
    print(f"  orch status (1 poll)  : {status_s:6.2f} s   scheduler calls {status_calls}  states {sorted(states)}")
    ok = sub_calls.get("sbatch", 0) <= limit and sub_s < 3 and dry_s < 3
    print(f"  target: < 3 s and <= {limit} sbatch call(s): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
