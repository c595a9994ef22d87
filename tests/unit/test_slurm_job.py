"""The SLURM job side and the job wrapper's reading of a SIGTERM without a warning.

Slurm sends the same SIGTERM for `scancel`, for a node it marks DOWN (and requeues the job itself)
and for a preemption; the job side asks `scontrol show job` and slurmstepd's line in the job's
output which one it was. `scontrol` is scripted here; tests/slurm/test_slurm_faults.py does it for real.
"""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest

from orchestrator.backends.base import JobEnvironment, StopVerdict
from orchestrator.backends.slurm import job as slurm_job
from orchestrator.backends.slurm.cli import SlurmCLI
from orchestrator.job.wrapper import JobWrapper
from orchestrator.record import record
from orchestrator.record.record import IllegalTransition, now_iso
from orchestrator.record.states import State
from orchestrator.record.tree import ResultsRoot, Run
from orchestrator.spec.schema import spec_to_yaml
from trainers.lm.config import LMSpec as Spec

NODE_FAIL = "slurmstepd-n1: error: *** JOB 12 ON n1 CANCELLED AT 2026-12-03T11:33:35 DUE TO NODE FAILURE, SEE SLURMCTLD LOG ***"
SCANCEL = "slurmstepd-n1: error: *** JOB 12 ON n1 CANCELLED AT 2026-12-03T11:33:35 ***"


class Slurm:
    """What `scontrol -o show job 12` prints (`shown`), and every command run (`calls`)."""

    def __init__(self) -> None:
        self.shown = ""
        self.calls: list[list[str]] = []


@pytest.fixture
def slurm(monkeypatch: pytest.MonkeyPatch) -> Slurm:
    """Inside job 12 (restart 0), with Slurm's commands scripted."""
    fake = Slurm()

    def run(self: SlurmCLI, argv: Sequence[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        fake.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, fake.shown if "show" in argv else "", "")

    monkeypatch.setattr(SlurmCLI, "run", run)
    monkeypatch.setattr(slurm_job.SlurmJobEnvironment, "job_id", lambda self: "12")
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    return fake


def verdict(slurm: Slurm, shown: str, lines: list[str]) -> Optional[StopVerdict]:
    slurm.shown = shown
    return slurm_job.SlurmJobEnvironment().stop_verdict(lines)


def test_scancel_is_a_cancellation(slurm: Slurm) -> None:
    v = verdict(slurm, "JobId=12 JobState=CANCELLED Reason=None Restarts=0", [])
    assert v is not None and (v.cause, v.requeued) == ("cancelled", False)
    # while the batch step still runs, Slurm shows COMPLETING: slurmstepd's line says why
    v = verdict(slurm, "JobId=12 JobState=COMPLETING Reason=None Restarts=0", [SCANCEL])
    assert v is not None and v.cause == "cancelled"
    assert verdict(slurm, "JobId=12 JobState=RUNNING Restarts=0", []) is None  # a signal by hand


def test_node_failure_requeued_by_slurm_is_not_requeued_again(slurm: Slurm) -> None:
    env = slurm_job.SlurmJobEnvironment()
    slurm.shown = "JobId=12 JobState=PENDING Reason=None Restarts=1"
    v = env.stop_verdict([NODE_FAIL])
    assert v is not None and (v.cause, v.requeued) == ("node_fail", True)
    assert env.requeue() is True
    assert not [c for c in slurm.calls if c[:2] == ["scontrol", "requeue"]]  # Slurm did it already
    env.drop_requeue()
    assert ["scancel", "12"] in slurm.calls


def test_scheduler_unreachable_means_cancelled(slurm: Slurm, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import BackendUnavailable

    def down(self: SlurmCLI, argv: Sequence[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        raise BackendUnavailable("scontrol: Unable to contact slurm controller")

    monkeypatch.setattr(SlurmCLI, "run", down)
    assert slurm_job.SlurmJobEnvironment().stop_verdict([]) is None
    v = slurm_job.SlurmJobEnvironment().stop_verdict([NODE_FAIL])  # slurmstepd's line still tells
    assert v is not None and v.cause == "node_fail" and not v.requeued


class FakeJob(JobEnvironment):
    """A job side that answers as told; counts requeues and dropped requeues."""

    name = "slurm"

    def __init__(self, verdict: Optional[StopVerdict] = None, job_id: str = "12", restarts: int = 0) -> None:
        self.verdict, self._id, self.restarts = verdict, job_id, restarts
        self.dropped = 0

    def job_id(self) -> Optional[str]:
        return self._id

    def restart_count(self) -> int:
        return self.restarts

    def requeue(self) -> bool:
        return True

    def stop_verdict(self, log_lines: list[str]) -> Optional[StopVerdict]:
        return self.verdict

    def drop_requeue(self) -> None:
        self.dropped += 1


def make_run(tmp_path: Path, state: str = "RUNNING", attempts: Optional[list[dict[str, Any]]] = None,
             **retry: Any) -> Run:
    atts = attempts if attempts is not None else [
        {"n": 1, "backend": "slurm", "job_id": "12", "started_at": now_iso(), "restart_count": 0}]
    run = ResultsRoot(tmp_path).create_run("r", {"state": state, "backend": "slurm", "attempts": atts})
    run.paths.spec.write_text(spec_to_yaml(Spec(name="r", backend="slurm", retry=retry or {"max_attempts": 3})))
    return run


@pytest.mark.parametrize("v, expected", [
    (None, (State.CANCELLED, "cancelled", False, 0)),
    (StopVerdict("cancelled"), (State.CANCELLED, "cancelled", False, 0)),
    (StopVerdict("node_fail", requeued=True), (State.FAILED, "node_fail", True, 0)),
    (StopVerdict("preempted"), (State.PREEMPTED, "preempted", True, 0)),
])
def test_sigterm_without_warning(tmp_path: Path, v: Optional[StopVerdict], expected: tuple[Any, ...]) -> None:
    run = make_run(tmp_path)
    w = JobWrapper(run.paths.root, "slurm", job=FakeJob(v))
    w.signals_seen = [signal.SIGTERM]
    job = w.job
    assert (*w.outcome(75), job.dropped) == expected  # type: ignore[attr-defined]


def test_a_requeue_the_policy_does_not_allow_is_dropped(tmp_path: Path) -> None:
    run = make_run(tmp_path, max_attempts=1)
    w = JobWrapper(run.paths.root, "slurm", job=FakeJob(StopVerdict("node_fail", requeued=True)))
    w.signals_seen = [signal.SIGTERM]
    assert w.outcome(75) == (State.FAILED, "node_fail", False)
    assert w.job.dropped == 1  # type: ignore[attr-defined]
    w.signals_seen = [signal.SIGUSR1, signal.SIGTERM]  # a warning first: a time limit, asked of nobody
    assert w.outcome(75)[1] in ("timeout", "preempted")


def test_restart_after_a_silent_node_failure_claims_the_next_attempt(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The wrapper died with its node (the record still says RUNNING); Slurm restarts the same job."""
    run = make_run(tmp_path)
    w = JobWrapper(run.paths.root, "slurm", job=FakeJob(restarts=1))
    assert w.claim_attempt() == 2
    rec = run.reload()
    first, second = rec["attempts"]
    assert first["cause"] == "node_fail" and first["requeued"] is True and first["ended_at"]
    assert (second["job_id"], second["restart_count"], rec["state"]) == ("12", 1, "RUNNING")
    err = capsys.readouterr().err  # the job's output: the scheduler's log on SLURM
    assert "orch: attempt 1 ended without a word" in err and "orch: attempt 2 started (job 12, restart 1)" in err


def test_restart_of_a_run_recorded_stopped_opens_a_new_attempt_but_never_of_a_cancelled_one(tmp_path: Path) -> None:
    ended = [{"n": 1, "backend": "slurm", "job_id": "12", "started_at": now_iso(), "ended_at": now_iso(),
              "restart_count": 0, "state": "FAILED", "cause": "node_fail"}]
    run = make_run(tmp_path / "a", state="FAILED", attempts=ended)
    assert JobWrapper(run.paths.root, "slurm", job=FakeJob(restarts=1)).claim_attempt() == 2
    assert run.reload()["state"] == "RUNNING"
    cancelled = make_run(tmp_path / "b", state="CANCELLED", attempts=[{**ended[0], "state": "CANCELLED"}])
    with pytest.raises(IllegalTransition):
        JobWrapper(cancelled.paths.root, "slurm", job=FakeJob(restarts=1)).claim_attempt()
    twin = make_run(tmp_path / "c")  # a different job id must never take over a run
    with pytest.raises(IllegalTransition):
        JobWrapper(twin.paths.root, "slurm", job=FakeJob(job_id="99", restarts=1)).claim_attempt()
    assert record.current_attempt(twin.reload())["job_id"] == "12"
