"""`orch plan --probe N`: N real steps of a spec, as a job runs them, measured.

The probe is the spec itself with a budget of N steps (rounded so that both halves end on a
logged step), a log every N/10 steps, one evaluation and one checkpoint half-way and again at the
end, submitted to a backend (local by default) in a throw-away results root under
`<results>/.probes/` and waited for. From the files the job leaves, the same as any run's:

- step time and tokens/s: the trainer's `logs/train_diagnostics.jsonl` (the median after the first
  interval, which holds the warm-up);
- one evaluation: `eval_seconds` of the half-way evaluation in `eval/metrics_history.jsonl`;
- one checkpoint: the rest of the pause between the half-way log record and the next one;
- the job's wall time: from `logs/environment-1.json` (written as the trainer starts) to
  `exit.json` (written as the attempt ends); the overhead O is what steps and the half-way pause
  leave of it (`orchestrator.plan.projection`);
- peak memory: the trainer's `mem_peak_gb` on a GPU, else the largest resident set (VmHWM) of the
  job's processes, sampled while it runs (local backend).
"""
from __future__ import annotations

import math
import os
import shutil
import statistics
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from orchestrator.errors import UserError
from orchestrator.plan.projection import ProbeResult

POLL = 0.2
PROBE_TIME = 3600.0  # seconds: the probe's time limit when the spec's is shorter


def probe_spec(spec: Any, steps: int, backend: str) -> tuple[Any, int, int]:
    """(the probe's spec, its steps, its log interval): see the module doc."""
    log_every = max(1, steps // 10)
    half = max(1, math.ceil(steps / 2 / log_every)) * log_every
    n = 2 * half
    train = spec.train.model_copy(update={"max_steps": n, "max_tokens": None, "epochs": None, "max_time": None,
                                          "log_every": log_every, "decay_steps": spec.train.decay_steps})
    update = {"train": train, "backend": backend, "sweep": None, "after": [],
              "eval": spec.eval.model_copy(update={"every": half}),
              "checkpoint": spec.checkpoint.model_copy(update={"every": half}),
              "retry": spec.retry.model_copy(update={"max_attempts": 1}),
              # the probe measures, it is not held to the run's time limit (start-up alone may be minutes)
              "resources": spec.resources.model_copy(update={"time": max(spec.resources.time_seconds, PROBE_TIME)}),
              "preserve": spec.preserve.model_copy(update={"auto": False})}
    return spec.model_copy(update=update), n, log_every


def _vm_hwm(pids: list[int]) -> int:
    """The largest peak resident set (bytes) among `pids`."""
    peak = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            continue
    return peak


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_probe(spec: Any, steps: int, results: Path, backend: str = "local", keep: bool = False) -> ProbeResult:
    """Submit the probe of `spec`, wait for it, and measure it (see the module doc)."""
    from orchestrator.backends import SubmitGroup, SubmitItem, get_backend
    from orchestrator.backends.local.submit import parse_job_id, session_members
    from orchestrator.lifecycle.refresh import persist, refresh
    from orchestrator.record.states import State
    from orchestrator.record.tree import ResultsRoot
    from orchestrator.spec.schema import spec_to_yaml

    probe, n, log_every = probe_spec(spec, steps, backend)
    root_dir = Path(results) / ".probes" / f"{spec.name}-{uuid.uuid4().hex[:8]}"
    root = ResultsRoot(root_dir)
    run = root.create_run(probe.name, {"total_steps": n, "trainer": probe.trainer, "stall_after": 600.0,
                                       "probe_of": spec.name}, files={"spec.yaml": spec_to_yaml(probe)})
    try:
        (job_id,) = get_backend(backend).submit(SubmitGroup([SubmitItem(run, probe)], group_id=run.run_id))
        rss = 0
        while True:
            if backend == "local":
                rss = max(rss, _vm_hwm(session_members(parse_job_id(job_id)[0])))
            (view,) = refresh([run])
            persist(view)
            if view.state.terminal:
                break
            time.sleep(POLL)
        paths = run.paths
        if view.state != State.COMPLETED:
            keep = True  # for the user to read
            raise UserError(f"the probe of {spec.name} ended {view.state}" + (f" ({view.reason})" if view.reason else ""),
                            hint=f"its run folder is kept: {paths.root}\n" + _tail(paths.stderr(1)))
        return measure(paths, n, log_every, rss or None)
    finally:
        if not keep:
            shutil.rmtree(root_dir, ignore_errors=True)


def measure(paths: Any, n: int, log_every: int, rss: Optional[int]) -> ProbeResult:
    """A ProbeResult from a finished probe's run folder (see the module doc)."""
    from orchestrator.record.atomicio import read_json, read_jsonl

    logs = [r for r in read_jsonl(paths.diagnostics) if "step_time" in r]
    evals = {r["step"]: r for r in read_jsonl(paths.metrics_history) if "eval_seconds" in r}
    if not logs:
        raise UserError(f"the probe logged no training step ({paths.diagnostics})")
    steady = logs[1:] or logs
    step_time = statistics.median(r["step_time"] for r in steady)
    tps = [r["tokens_per_sec"] for r in steady if r.get("tokens_per_sec")]
    half = n // 2
    at_half = next((i for i, r in enumerate(logs) if r["step"] == half), None)
    eval_s = float(evals.get(half, {}).get("eval_seconds") or 0.0)
    pause = eval_s
    if at_half is not None and at_half + 1 < len(logs):
        nxt = logs[at_half + 1]
        pause = max(eval_s, nxt["time"] - logs[at_half]["time"] - (nxt["step"] - half) * nxt["step_time"])
    started = os.stat(paths.environment(1)).st_mtime
    ended = os.stat(paths.exit_status).st_mtime
    wall = ended - started
    gpu_peaks = [v for r in logs for v in (r.get("mem_peak_gb") or [])]
    attempts = (read_json(paths.run_json, {}) or {}).get("attempts") or [{}]
    return ProbeResult(steps=n, step_time=step_time, tokens_per_sec=statistics.median(tps) if tps else None,
                       eval_seconds=eval_s, checkpoint_seconds=pause - eval_s,
                       overhead_seconds=max(0.0, wall - n * step_time - pause), wall_seconds=wall,
                       peak_memory_bytes=max(gpu_peaks) * 2**30 if gpu_peaks else rss,
                       peak_memory_kind="gpu" if gpu_peaks else ("rss" if rss else None),
                       host=attempts[-1].get("host"))
