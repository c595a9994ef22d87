"""Status, persist and the monitor's retry decision on SLURM runs, with the scheduler's answers
scripted: a job Slurm forgot (no accounting), a cancelled requeue, a requeue Slurm still holds,
a scheduler that does not answer. tests/slurm/test_slurm_faults.py does each on the real cluster."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import pytest

from orchestrator.backends.base import Backend, JobStatus, StaleAnswer
from orchestrator.lifecycle import refresh as refresh_mod
from orchestrator.lifecycle.refresh import persist, refresh
from orchestrator.monitor.monitor import Monitor
from orchestrator.record.atomicio import read_jsonl
from orchestrator.record.record import now_iso
from orchestrator.record.states import State
from orchestrator.record.tree import ResultsRoot, Run
from orchestrator.spec.schema import spec_to_yaml
from trainers.lm.config import LMSpec as Spec


class Scheduler(Backend):
    """poll() answers from `jobs` ({job id: JobStatus}), or raises `down`."""

    name = "slurm"

    def __init__(self) -> None:
        self.jobs: dict[str, JobStatus] = {}
        self.down: Optional[StaleAnswer] = None

    def render(self, item: Any, group: Any) -> str:
        raise NotImplementedError

    def submit(self, group: Any) -> list[str]:
        raise AssertionError("nothing may be resubmitted here")

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        if self.down is not None:
            raise self.down
        return {j: self.jobs.get(j, JobStatus(j, None)) for j in job_ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        raise NotImplementedError


@pytest.fixture
def slurm(monkeypatch: pytest.MonkeyPatch) -> Scheduler:
    fake = Scheduler()
    monkeypatch.setattr(refresh_mod, "get_backend", lambda name: fake)
    monkeypatch.setattr("orchestrator.backends.get_backend", lambda name: fake)
    return fake


def make_run(root: Path, state: str, *attempts: dict[str, Any], **extra: Any) -> Run:
    run = ResultsRoot(root).create_run("r", {"state": state, "backend": "slurm", "attempts": list(attempts), **extra})
    run.paths.spec.write_text(spec_to_yaml(Spec(name="r", backend="slurm", retry={"max_attempts": 3, "backoff": 0})))
    return run


def started(n: int = 1, **kw: Any) -> dict[str, Any]:
    return {"n": n, "backend": "slurm", "job_id": "12", "submitted_at": now_iso(), "started_at": now_iso(),
            "restart_count": n - 1, **kw}


def events(root: Path) -> list[str]:
    path = root / "events.jsonl"
    return [e["event"] for e in read_jsonl(path)] if path.exists() else []


def test_a_job_forgotten_before_it_started_is_cancelled_not_node_fail(tmp_path: Path, slurm: Scheduler) -> None:
    run = make_run(tmp_path, "QUEUED", {"n": 1, "backend": "slurm", "job_id": "12", "submitted_at": now_iso()})
    before = run.paths.run_json.read_bytes()
    [view] = refresh([run])
    assert view.state == State.CANCELLED and view.failure and view.failure["class"] == "cancelled"
    assert not view.died and run.paths.run_json.read_bytes() == before  # status writes nothing
    Monitor(tmp_path).run_pass()  # default retry.on has node_fail: a guess of node_fail would resubmit
    rec = run.reload()
    assert rec["state"] == "CANCELLED" and rec["failure"]["class"] == "cancelled" and rec["failure"]["inferred"]
    assert "retried" not in events(tmp_path)


def test_a_cancel_request_is_a_cancellation(tmp_path: Path, slurm: Scheduler) -> None:
    run = make_run(tmp_path, "RUNNING", started())
    run.paths.cancel_request.write_text("cancelled by orch cancel\n")
    [view] = refresh([run])
    assert view.state == State.CANCELLED and view.reason == "cancelled by orch cancel"


def test_a_started_job_that_vanished_is_a_guess_and_said_so(tmp_path: Path, slurm: Scheduler) -> None:
    run = make_run(tmp_path, "RUNNING", started())
    [view] = refresh([run])
    assert view.state == State.FAILED and view.died and view.failure and view.failure["inferred"]
    assert persist(view)
    assert run.reload()["failure"]["inferred"] is True


def test_the_schedulers_kill_signal_is_killed(tmp_path: Path, slurm: Scheduler) -> None:
    run = make_run(tmp_path, "RUNNING", started())
    slurm.jobs["12"] = JobStatus("12", State.FAILED, "FAILED", exit_code=0, signal=9)
    [view] = refresh([run])
    assert view.state == State.FAILED and view.failure and view.failure["class"] == "killed"
    assert persist(view)
    f = run.reload()["failure"]
    assert f["class"] == "killed" and f["signal"] == 9 and not f.get("inferred")


def test_a_cancelled_requeue_belongs_to_the_attempt_that_never_started(tmp_path: Path, slurm: Scheduler) -> None:
    run = make_run(tmp_path, "QUEUED", started(ended_at=now_iso(), state="PREEMPTED", cause="preempted",
                                               exit_code=75, requeued=True),
                   pending_reason="requeued after preempted")
    slurm.jobs["12"] = JobStatus("12", State.QUEUED, "PENDING", reason="BeginTime")
    [view] = refresh([run])
    assert view.state == State.QUEUED and view.reason == "requeued after preempted; waiting: BeginTime"
    slurm.jobs["12"] = JobStatus("12", State.CANCELLED, "CANCELLED")
    [view] = refresh([run])
    assert view.state == State.CANCELLED and view.failure and view.failure["class"] == "cancelled"
    result = Monitor(tmp_path).run_pass()
    assert [e["event"] for e in result.events] == ["cancelled"]
    rec = run.reload()
    assert rec["state"] == "CANCELLED" and rec["failure"] == {**rec["failure"], "class": "cancelled", "attempt": 2}
    first, second = rec["attempts"]
    assert first["cause"] == "preempted" and second["state"] == "CANCELLED" and "started_at" not in second
    assert Monitor(tmp_path).run_pass().events == []


def test_a_requeue_slurm_still_holds_is_never_resubmitted(tmp_path: Path, slurm: Scheduler) -> None:
    """The record says FAILED node_fail (retry.on has it) but Slurm holds the job for its own requeue."""
    run = make_run(tmp_path, "FAILED", started(ended_at=now_iso(), state="FAILED", cause="node_fail"),
                   failure={"class": "node_fail", "summary": "the node failed", "attempt": 1, "evidence": []})
    slurm.jobs["12"] = JobStatus("12", State.QUEUED, "PENDING", reason="BeginTime")
    result = Monitor(tmp_path).run_pass()
    assert "retry_held" in [e["event"] for e in result.events] and "retried" not in events(tmp_path)
    assert len(run.reload()["attempts"]) == 1
    assert "retry_held" not in [e["event"] for e in Monitor(tmp_path).run_pass().events]  # said once


def test_slurms_own_requeue_of_a_silent_job_is_recorded_not_resubmitted(tmp_path: Path, slurm: Scheduler) -> None:
    """The wrapper died with its node (nothing recorded); Slurm shows the job PENDING again."""
    run = make_run(tmp_path, "RUNNING", started())
    slurm.jobs["12"] = JobStatus("12", State.QUEUED, "PENDING", reason="BeginTime")
    [view] = refresh([run])
    assert view.state == State.QUEUED and "requeued by the scheduler" in (view.reason or "")
    assert persist(view)
    rec = run.reload()
    assert rec["state"] == "QUEUED" and rec["attempts"][0]["requeued"] and rec["attempts"][0]["cause"] == "node_fail"


def test_an_unreachable_scheduler_is_stale_and_decides_nothing(tmp_path: Path, slurm: Scheduler) -> None:
    run = make_run(tmp_path, "RUNNING", started())
    slurm.down = StaleAnswer("squeue did not answer within 30 s",
                             last_known={"12": JobStatus("12", State.RUNNING, "RUNNING")})
    [view] = refresh([run])
    assert view.state == State.RUNNING and view.stale and view.reason and view.reason.startswith("stale")
    assert not persist(view)
    with pytest.raises(StaleAnswer):
        refresh([run], strict=True)
    result = Monitor(tmp_path).run_pass()
    assert result.unavailable and "backend_unavailable" in [e["event"] for e in result.events]
    slurm.down = StaleAnswer("squeue did not answer within 30 s")  # nothing known: the run folder's state
    [view] = refresh([run])
    assert view.state == State.RUNNING and not view.died
