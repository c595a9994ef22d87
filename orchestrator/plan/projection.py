"""Wall time of a whole run from a probe's measurements; requeues, GPU-hours, warnings; a running
trainer's ETA.

A probe (`orchestrator.plan.probe`) measures, on the same code path as a real job: the time of one
training step `t` (evaluation and checkpoint pauses excluded, as the trainers log it), the seconds
of one evaluation `e` and of one checkpoint `c` taken mid-run, and `O`, everything else of the
job's wall time (start-up, imports, data loading or tokenizing, warm-up, the final evaluation,
checkpoint, export and samples, exit). A run of T steps, evaluating every E and checkpointing every
C steps, then takes

    wall(T) = O + T t + floor((T-1)/E) e + floor((T-1)/C) c

(the last step's evaluation and checkpoint are in O, as they were in the probe's). An attempt may
run `resources.time - resources.signal_grace` before the warning signal; each further attempt
pays O again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

EVAL_FRACTION_WARN = 0.25  # warn when evaluating costs more than this share of the training steps
MULTIPLES = (1, 5, 10, 50)


@dataclass
class ProbeResult:
    """What N real steps measured (see the module doc)."""

    steps: int
    step_time: float
    tokens_per_sec: Optional[float]
    eval_seconds: float
    checkpoint_seconds: float
    overhead_seconds: float
    wall_seconds: float
    peak_memory_bytes: Optional[float] = None
    peak_memory_kind: Optional[str] = None  # "gpu" (max_memory_allocated) or "rss" (resident set, CPU runs)
    host: Optional[str] = None  # where the probe ran


@dataclass
class Projection:
    steps: Optional[int]
    wall_seconds: float        # one uninterrupted run
    train_seconds: float
    eval_seconds: float
    checkpoint_seconds: float
    attempts: int
    total_seconds: float       # with every requeued attempt's overhead
    device_hours: Optional[float]
    eval_fraction: Optional[float]

    @property
    def requeues(self) -> int:
        return self.attempts - 1


def wall_seconds(steps: int, probe: ProbeResult, eval_every: int, checkpoint_every: int,
                 eval_at_end: bool = True) -> tuple[float, float, float]:
    """(wall, evaluation seconds, checkpoint seconds) of `steps` steps (see the module doc)."""
    evals = (steps - 1) // eval_every
    ckpts = (steps - 1) // checkpoint_every
    eval_s = evals * probe.eval_seconds
    if not eval_at_end and steps % eval_every:
        eval_s -= probe.eval_seconds  # the probe's last step evaluated; this run's will not
    ckpt_s = ckpts * probe.checkpoint_seconds
    return probe.overhead_seconds + steps * probe.step_time + eval_s + ckpt_s, eval_s, ckpt_s


def attempts_needed(wall: float, overhead: float, attempt_limit: float) -> int:
    """Attempts a run of `wall` seconds needs when each may run `attempt_limit` seconds and each
    further one pays `overhead` again; a very large number when an attempt cannot even start."""
    if wall <= attempt_limit:
        return 1
    useful = attempt_limit - overhead
    if useful <= 0:
        return 10**9
    return 1 + math.ceil((wall - attempt_limit) / useful)


def project(spec: Any, steps: Optional[int], probe: ProbeResult, devices: int) -> Projection:
    """The whole run of `spec` (`steps` optimizer steps; None: only `train.max_time` bounds it)."""
    max_time = spec.train.max_time_seconds
    if steps is None:  # bounded by time: as many steps as fit in max_time
        per_step = probe.step_time + probe.eval_seconds / spec.eval.every + probe.checkpoint_seconds / spec.checkpoint.every
        steps = int(max_time // per_step) if max_time and per_step > 0 else None
    if steps is None:
        raise ValueError("the budget is train.epochs alone, and the plan does not know the epoch's size: "
                         "add train.max_steps or train.max_tokens")
    wall, eval_s, ckpt_s = wall_seconds(steps, probe, spec.eval.every, spec.checkpoint.every, spec.eval.at_end)
    if max_time is not None and wall - probe.overhead_seconds > max_time:  # max_time ends it first
        wall = probe.overhead_seconds + max_time
    limit = spec.resources.time_seconds - spec.resources.signal_grace
    attempts = attempts_needed(wall, probe.overhead_seconds, limit)
    total = wall + (attempts - 1) * probe.overhead_seconds if attempts < 10**9 else math.inf
    train_s = steps * probe.step_time
    return Projection(steps=steps, wall_seconds=wall, train_seconds=train_s, eval_seconds=eval_s,
                      checkpoint_seconds=ckpt_s, attempts=attempts, total_seconds=total,
                      device_hours=total * devices / 3600 if devices and not math.isinf(total) else None,
                      eval_fraction=eval_s / train_s if train_s else None)


def requeues_allowed(spec: Any) -> int:
    """Further attempts `retry:` grants a run stopped at its time limit."""
    return spec.retry.max_attempts - 1 if "timeout" in spec.retry.on else 0


def warnings(spec: Any, projection: Projection, eval_fraction_limit: float = EVAL_FRACTION_WARN) -> list[str]:
    """What will go wrong: no time to finish, evaluation eating the budget."""
    out = []
    if math.isinf(projection.total_seconds):
        out.append(f"start-up and end alone take longer than resources.time {spec.resources.time} minus its "
                   f"signal_grace: no attempt can train; raise resources.time")
    elif projection.requeues > requeues_allowed(spec):
        allowed = requeues_allowed(spec)
        out.append(f"needs {projection.attempts} attempts of resources.time {spec.resources.time} "
                   f"({projection.requeues} requeue(s)) but retry allows {allowed}: raise resources.time, "
                   f"or retry: {{max_attempts: {projection.attempts}, on: [timeout, ...]}}")
    if projection.eval_fraction is not None and projection.eval_fraction > eval_fraction_limit:
        out.append(f"evaluation costs {projection.eval_fraction:.0%} of the training time (more than "
                   f"{eval_fraction_limit:.0%}): raise eval.every or lower eval.batches")
    return out


def remaining_seconds(step: int, start_step: int, total: Optional[int], elapsed: float,
                      time_left: Optional[float]) -> Optional[float]:
    """A running trainer's ETA (what `orch status` shows): the steps left at this attempt's measured
    pace (evaluation and checkpoint pauses included, as `wall_seconds` projects them), or the
    `max_time` left when that ends first."""
    left = []
    if total and step > start_step:
        left.append((total - step) * elapsed / (step - start_step))
    if time_left is not None:
        left.append(max(0.0, time_left))
    return round(min(left), 1) if left else None
