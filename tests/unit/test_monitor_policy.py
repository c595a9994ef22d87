"""Retry policy decisions of one monitor pass on run folders that already ended (no jobs started)."""
from __future__ import annotations

import time
from pathlib import Path

from orchestrator.record.atomicio import read_jsonl
from orchestrator.monitor.monitor import Monitor
from orchestrator.record.record import now_iso
from orchestrator.record.tree import ResultsRoot, Run
from orchestrator.spec.schema import spec_to_yaml
from trainers.lm.config import LMSpec

TB = 'Traceback (most recent call last):\n  File "/x/model.py", line 3, in f\n    g()\nKeyError: \'x\'\n'


def failed_run(root: Path, ended_ago: float = 0.0, **spec_kw) -> Run:
    ended = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - ended_ago))
    run = ResultsRoot(root).create_run("p", {"state": "FAILED", "backend": "local", "exit_code": 1, "attempts": [
        {"n": 1, "job_id": "1@1", "started_at": now_iso(), "ended_at": ended, "exit_code": 1, "state": "FAILED"}]})
    run.paths.spec.write_text(spec_to_yaml(LMSpec(name="p", **spec_kw)))
    run.paths.stderr(1).write_text(TB)
    return run


def kinds(root: Path) -> list[str]:
    return [e["event"] for e in read_jsonl(root / "events.jsonl")]


def test_backoff_schedules_once_and_passes_are_idempotent(tmp_path: Path) -> None:
    run = failed_run(tmp_path, retry={"on": ["user_error"], "backoff": "1h"})
    r = Monitor(tmp_path).run_pass()
    assert [e["event"] for e in r.events] == ["failed", "retry_scheduled"]
    assert "retry in 3600s" in r.events[1]["summary"] or "retry in 3599s" in r.events[1]["summary"]
    assert Monitor(tmp_path).run_pass().events == []  # nothing new: no repeated alert
    rec = run.reload()
    assert rec["failure"]["class"] == "user_error" and len(rec["attempts"]) == 1
    assert rec["monitor"]["notified_attempt"] == 1 and "retry_at" in rec["monitor"]


def test_default_policy_does_not_retry_user_errors(tmp_path: Path) -> None:
    failed_run(tmp_path)
    r = Monitor(tmp_path).run_pass()
    assert [e["event"] for e in r.events] == ["failed", "not_retried"]
    assert r.events[0]["exception"] == "KeyError: 'x'" and "model.py:3" in r.events[0]["summary"]
    assert Monitor(tmp_path).run_pass().events == []
    assert kinds(tmp_path) == ["failed", "not_retried"]


def test_exhausted_attempts_give_up(tmp_path: Path) -> None:
    failed_run(tmp_path, retry={"on": ["user_error"], "max_attempts": 1, "backoff": 0})
    assert [e["event"] for e in Monitor(tmp_path).run_pass().events] == ["failed", "gave_up"]


def test_old_failures_are_not_retried_automatically(tmp_path: Path) -> None:
    run = failed_run(tmp_path, ended_ago=3 * 86400, retry={"on": ["user_error"], "backoff": 0})
    ev = Monitor(tmp_path).run_pass().events
    assert [e["event"] for e in ev] == ["failed", "not_retried"] and "orch resume" in ev[1]["summary"]
    assert len(run.reload()["attempts"]) == 1


def test_overlapping_pass_exits_quietly(tmp_path: Path) -> None:
    from orchestrator.record.atomicio import file_lock

    failed_run(tmp_path)
    with file_lock(tmp_path / ".monitor.lock"):
        assert Monitor(tmp_path).run_pass().skipped
    assert not (tmp_path / "events.jsonl").exists()
