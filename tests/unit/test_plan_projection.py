"""`orch plan`'s projection: a probe's files measured, wall time and requeues projected, warnings."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.plan.probe import measure, probe_spec
from orchestrator.plan.projection import (ProbeResult, attempts_needed, project, remaining_seconds, wall_seconds,
                                          warnings)
from orchestrator.record.paths import RunPaths
from orchestrator.spec.schema import spec_from_data

PROBE = ProbeResult(steps=40, step_time=0.1, tokens_per_sec=5000.0, eval_seconds=2.0, checkpoint_seconds=0.5,
                    overhead_seconds=30.0, wall_seconds=0.0)


def _spec(**train):
    return spec_from_data({"name": "p", "trainer": "lm", "data": {"builtin": "arith"},
                           "train": {"max_steps": 1000, **train}, "eval": {"every": 100},
                           "checkpoint": {"every": 250}, "resources": {"time": "00:10:00", "signal_grace": 60},
                           "retry": {"max_attempts": 1}}, "test")


def test_wall_time_counts_the_evaluations_and_checkpoints_before_the_last_step() -> None:
    wall, eval_s, ckpt_s = wall_seconds(1000, PROBE, 100, 250)
    # 9 evaluations and 3 checkpoints before step 1000; the last step's are in the overhead
    assert (eval_s, ckpt_s) == (18.0, 1.5)
    assert wall == pytest.approx(30 + 100 + 18 + 1.5)
    # 10 evaluations and none at step 1050: the overhead's (the probe ended on one) is taken back out
    assert wall_seconds(1050, PROBE, 100, 250, eval_at_end=False)[1] == 9 * 2.0


def test_requeues_from_the_time_limit_and_the_retry_policy() -> None:
    assert attempts_needed(500, 30, 540) == 1
    assert attempts_needed(1000, 30, 540) == 2          # 540 in the first, 460 of 510 useful in the second
    assert attempts_needed(2000, 30, 540) == 4          # 1460 more at 510 a piece
    assert attempts_needed(100, 50, 40) == 10**9        # an attempt cannot even start its work
    spec = _spec(max_steps=10000)                       # 30 + 1000 + 198 + 7.5 s: 3 attempts of 540 s
    proj = project(spec, 10000, PROBE, devices=2)
    assert proj.attempts == 3 and proj.requeues == 2
    assert proj.total_seconds == pytest.approx(proj.wall_seconds + 2 * 30)
    assert proj.device_hours == pytest.approx(proj.total_seconds * 2 / 3600)
    (warning,) = warnings(spec, proj)
    assert "needs 3 attempts" in warning and "retry allows 0" in warning


def test_eval_heavy_schedule_and_time_bounded_runs() -> None:
    slow_eval = ProbeResult(**{**PROBE.__dict__, "eval_seconds": 4.0})
    proj = project(_spec(), 1000, slow_eval, devices=0)
    assert proj.eval_fraction == pytest.approx(36 / 100) and proj.device_hours is None
    assert any("evaluation costs 36%" in w for w in warnings(_spec(), proj))
    timed = spec_from_data({"name": "t", "trainer": "lm", "train": {"max_time": "5m"}, "eval": {"every": 100},
                            "checkpoint": {"every": 100}}, "test")
    proj = project(timed, None, PROBE, devices=1)
    assert proj.steps == int(300 // (0.1 + 0.02 + 0.005))
    assert proj.wall_seconds == pytest.approx(30 + 300, abs=2.5)  # the last evaluation + checkpoint: in the 30 s


def test_running_eta_is_the_measured_pace_or_the_time_left() -> None:
    assert remaining_seconds(step=60, start_step=10, total=110, elapsed=25.0, time_left=None) == 25.0  # 50 steps at 0.5 s
    assert remaining_seconds(step=60, start_step=10, total=110, elapsed=25.0, time_left=20.0) == 20.0
    assert remaining_seconds(step=10, start_step=10, total=110, elapsed=1.0, time_left=None) is None


def test_probe_spec_rounds_to_logged_halves() -> None:
    probe, n, log_every = probe_spec(_spec(max_tokens=10**9, max_time="2h"), 45, "local")
    assert (n, log_every) == (48, 4)
    assert probe.train.max_steps == 48 and probe.train.max_tokens is None and probe.train.max_time is None
    assert probe.eval.every == probe.checkpoint.every == 24 and probe.retry.max_attempts == 1


def test_measure_reads_the_probes_own_files(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "p" / "run")
    paths.make_dirs()
    t0 = 1000.0
    logs = [{"time": t0 + 10 + 0.3 * 10, "step": 10, "step_time": 0.3, "tokens_per_sec": 100.0},
            {"time": t0 + 10 + 0.1 * 20, "step": 20, "step_time": 0.1, "tokens_per_sec": 300.0},
            # the pause after step 20: a 1.5 s evaluation and a 0.5 s checkpoint, then 10 steps of 0.1 s
            {"time": t0 + 10 + 0.1 * 20 + 2.0 + 1.0, "step": 30, "step_time": 0.1, "tokens_per_sec": 300.0},
            {"time": t0 + 10 + 0.1 * 20 + 2.0 + 2.0, "step": 40, "step_time": 0.1, "tokens_per_sec": 300.0}]
    paths.diagnostics.write_text("".join(json.dumps(r) + "\n" for r in logs))
    paths.metrics_history.write_text(json.dumps({"step": 20, "eval_seconds": 1.5, "val_loss": 1.0}) + "\n")
    paths.environment(1).write_text("{}")
    paths.exit_status.write_text("{}")
    os.utime(paths.environment(1), (t0, t0))
    os.utime(paths.exit_status, (t0 + 30, t0 + 30))
    result = measure(paths, 40, 10, rss=123)
    assert result.step_time == pytest.approx(0.1) and result.tokens_per_sec == 300.0
    assert result.eval_seconds == 1.5 and result.checkpoint_seconds == pytest.approx(0.5)
    assert result.wall_seconds == pytest.approx(30.0)
    assert result.overhead_seconds == pytest.approx(30.0 - 40 * 0.1 - 2.0)
    assert (result.peak_memory_bytes, result.peak_memory_kind) == (123, "rss")


def test_a_time_limit_shorter_than_start_up_is_reported_not_divided_by() -> None:
    spec = spec_from_data({"name": "p", "trainer": "lm", "train": {"max_steps": 100},
                           "resources": {"time": "00:00:40", "signal_grace": 20}}, "test")
    proj = project(spec, 100, PROBE, devices=1)  # 30 s of overhead, 20 s per attempt
    assert proj.total_seconds == float("inf") and proj.device_hours is None
    (warning,) = warnings(spec, proj)
    assert "no attempt can train" in warning
