"""The run record's transitions: every named transition from every state, legal and illegal."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from orchestrator.errors import IllegalTransition, RecordDamaged
from orchestrator.record import record
from orchestrator.record.record import FAILURE_CLASSES, Failure, FailureClass, RunRecord
from orchestrator.record.states import ACTIVE, State
from orchestrator.record.tree import ResultsRoot, Run

REPO = Path(__file__).resolve().parents[2]
ALL = list(State)


def make(tmp_path: Path, state: State, attempts: int = 1, **fields: Any) -> Run:
    """A run in `state` whose current attempt is `attempts` (started when the state is past QUEUED)."""
    run = ResultsRoot(tmp_path / "results").create_run("exp", {})
    data = json.loads(run.paths.run_json.read_text())
    started = state not in (State.PENDING, State.QUEUED)
    data["attempts"] = [{"n": i, "backend": "local", "job_id": f"{100 + i}@1", "submitted_at": "t",
                         **({"started_at": "t"} if (i < attempts or started) else {}),
                         **({"ended_at": "t"} if i < attempts or state.terminal else {})}
                        for i in range(1, attempts + 1)] if state != State.PENDING else []
    data["state"] = state.value
    data.update(fields)
    run.paths.run_json.write_text(json.dumps(data))
    return Run(run.paths)


def state_of(run: Run) -> State:
    return State(json.loads(run.paths.run_json.read_text())["state"])


# (transition name, call, states it may leave from, state after)
TRANSITIONS: list[tuple[str, Callable[[Run], Any], set[State], Any]] = [
    ("submit", lambda r: record.submit(r, "local"), {State.PENDING}, State.QUEUED),
    ("resubmit", lambda r: record.resubmit(r, "local", after_attempt=1, reason="test"), set(record.STOPPED),
     State.QUEUED),
    ("waiting", lambda r: record.waiting(r, "Resources"), {State.PENDING, State.QUEUED}, State.QUEUED),
    ("claim", lambda r: record.claim(r, job_id=None, backend="local"), {State.PENDING, State.QUEUED}, State.RUNNING),
    ("finish", lambda r: record.finish(r, 1, State.FAILED, exit_code=1, cause="user_error"), set(ACTIVE), State.FAILED),
    ("cancel", lambda r: record.cancel(r), set(ACTIVE), State.CANCELLED),
    ("dependency_failed", lambda r: record.dependency_failed(r, "dep failed"), {State.PENDING, State.QUEUED},
     State.CANCELLED),
    ("submit_failed", lambda r: record.submit_failed(r, "local", "sbatch: error"), {State.PENDING, State.QUEUED},
     State.FAILED),
]


@pytest.mark.parametrize("name,call,allowed,after", TRANSITIONS, ids=[t[0] for t in TRANSITIONS])
@pytest.mark.parametrize("start", ALL, ids=[s.value for s in ALL])
def test_transition_table(tmp_path: Path, name: str, call: Callable[[Run], Any], allowed: set[State], after: State,
                          start: State) -> None:
    run = make(tmp_path, start)
    before = run.paths.run_json.read_text()
    if name == "finish" and start == State.PENDING:
        allowed = set()  # no attempt to finish
    if name == "finish" and start.terminal:
        # stopped meanwhile (cancel, monitor): the wrapper's word is kept on the attempt, the state stays
        assert call(run) == start and state_of(run) == start
        with pytest.raises(IllegalTransition, match="already finished"):
            call(run)
        return
    if start in allowed:
        call(run)
        assert state_of(run) == after
        RunRecord.from_dict(json.loads(run.paths.run_json.read_text()))  # still a valid record
    else:
        with pytest.raises(IllegalTransition):
            call(run)
        assert run.paths.run_json.read_text() == before, "a refused transition writes nothing"


GUARDED_BOOL = [
    ("stall", lambda r: record.stall(r, 1, "no heartbeat"), {State.RUNNING}, State.STALLED),
    ("recover", lambda r: record.recover(r, 1), {State.STALLED}, State.RUNNING),
    ("stop_stalled", lambda r: record.stop_stalled(r, 1, "no heartbeat"), {State.STALLED}, State.FAILED),
    ("vanish", lambda r: record.vanish(r, 1, State.FAILED, cls="node_fail", summary="gone"),
     {State.QUEUED, State.RUNNING, State.STALLED}, State.FAILED),
]


@pytest.mark.parametrize("name,call,allowed,after", GUARDED_BOOL, ids=[t[0] for t in GUARDED_BOOL])
@pytest.mark.parametrize("start", ALL, ids=[s.value for s in ALL])
def test_discovered_transitions(tmp_path: Path, name: str, call: Callable[[Run], bool], allowed: set[State],
                                after: State, start: State) -> None:
    """Transitions from what status discovers return False (and write nothing) when the run moved on."""
    run = make(tmp_path, start)
    before = run.paths.run_json.read_text()
    changed = call(run)
    if start in allowed:
        assert changed and state_of(run) == after
    else:
        assert not changed and run.paths.run_json.read_text() == before


def test_terminal_state_is_never_overwritten_by_a_late_finish(tmp_path: Path) -> None:
    run = make(tmp_path, State.RUNNING)
    record.cancel(run)
    kept = record.finish(run, 1, State.FAILED, exit_code=1)
    assert kept == State.CANCELLED and state_of(run) == State.CANCELLED
    rec = RunRecord.from_dict(json.loads(run.paths.run_json.read_text()))
    assert rec.current is not None and rec.current.exit_code == 1  # the attempt's own end is still recorded
    assert record.finish(run, 1, State.FAILED, exit_code=1, force=True) == State.FAILED


def test_resubmit_from_a_stale_attempt_loses(tmp_path: Path) -> None:
    """Two callers saw attempt 1 stopped: the first opens attempt 2, the second is told and writes nothing."""
    run = make(tmp_path, State.FAILED)
    assert record.resubmit(run, "local", after_attempt=1, reason="monitor") == 2
    record.finish(run, 2, State.FAILED, exit_code=1)  # even once attempt 2 has failed too
    with pytest.raises(IllegalTransition, match="attempt 1 is no longer current"):
        record.resubmit(run, "local", after_attempt=1, reason="resume")
    assert len(json.loads(run.paths.run_json.read_text())["attempts"]) == 2


def test_claim_refuses_a_job_the_record_does_not_name(tmp_path: Path) -> None:
    run = make(tmp_path, State.QUEUED)
    with pytest.raises(IllegalTransition, match="refusing to start a second copy"):
        record.claim(run, job_id="999@9", backend="local")
    assert record.claim(run, job_id="101@1", backend="local") == 1


def test_claim_after_a_scheduler_requeue_opens_a_new_attempt(tmp_path: Path) -> None:
    run = make(tmp_path, State.RUNNING)
    record.finish(run, 1, State.PREEMPTED, cause="preempted", requeue=True)
    assert state_of(run) == State.QUEUED
    assert record.claim(run, job_id="101@1", backend="slurm", restart_count=1) == 2
    rec = RunRecord.from_dict(json.loads(run.paths.run_json.read_text()))
    assert [a.reason for a in rec.attempts] == ["submit", "requeue"] and rec.state == State.RUNNING


def test_failure_classes_are_one_table() -> None:
    from orchestrator.checks import diagnose

    assert "disk_full" in FAILURE_CLASSES and "wrapper_error" in FAILURE_CLASSES
    assert set(FAILURE_CLASSES) == {c.value for c in FailureClass}
    src = Path(diagnose.__file__).read_text()
    import re

    used = set(re.findall(r'done\("([a-z_]+)"', src))
    assert used <= set(FAILURE_CLASSES), used - set(FAILURE_CLASSES)


def test_record_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    data = {"run_id": "r", "name": "n", "state": "FAILED", "custom": {"a": 1},
            "attempts": [{"n": 1, "job_id": "1", "weird": True}],
            "failure": {"class": "oom", "summary": "x", "evidence": ["l"], "future_key": 3}}
    rec = RunRecord.from_dict(data)
    assert rec.failure is not None and rec.failure.cls == "oom"
    assert rec.to_dict() == {**data, "attempts": [{"n": 1, "job_id": "1", "reason": "submit", "weird": True}]}


@pytest.mark.parametrize("content,problem", [("", "empty file"), ("{", "not valid JSON"), ("[]", "expected a JSON object"),
                                             ('{"state": "BOGUS"}', "unknown state"),
                                             ('{"state": "RUNNING", "attempts": 3}', "attempts")])
def test_damaged_records_are_refused_not_overwritten(tmp_path: Path, content: str, problem: str) -> None:
    run = make(tmp_path, State.RUNNING)
    run.paths.run_json.write_text(content)
    with pytest.raises(RecordDamaged, match=problem):
        record.cancel(run)
    assert run.paths.run_json.read_text() == content


def test_annotate_cannot_change_the_state(tmp_path: Path) -> None:
    run = make(tmp_path, State.COMPLETED)
    run.annotate(lambda rec: rec.__setitem__("checks", {"summary": "1/1 pass"}))
    assert json.loads(run.paths.run_json.read_text())["checks"] == {"summary": "1/1 pass"}
    with pytest.raises(IllegalTransition):
        run.annotate(lambda rec: rec.__setitem__("state", "FAILED"))
    assert state_of(run) == State.COMPLETED


def test_failure_marks_inferred_guesses(tmp_path: Path) -> None:
    run = make(tmp_path, State.RUNNING)
    record.vanish(run, 1, State.FAILED, cls="node_fail", summary="job vanished")
    assert json.loads(run.paths.run_json.read_text())["failure"]["inferred"] is True
    run2 = make(tmp_path / "b", State.RUNNING)
    record.vanish(run2, 1, State.FAILED, cls="killed", summary="scheduler says signal 9", signal=9)
    assert "inferred" not in json.loads(run2.paths.run_json.read_text())["failure"]
    assert Failure.from_dict({"class": "oom"}).to_dict() == {"class": "oom", "summary": ""}


def test_lock_is_a_file_per_run_and_serializes_processes(tmp_path: Path) -> None:
    """Transitions from concurrent processes: exactly one of N resubmits of the same attempt wins."""
    run = make(tmp_path, State.FAILED)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from orchestrator.errors import IllegalTransition\n"
            "from orchestrator.record import record\n"
            "from orchestrator.record.paths import RunPaths\n"
            "from orchestrator.record.tree import Run\n"
            "try:\n    record.resubmit(Run(RunPaths(%r)), 'local', after_attempt=1, reason='race')\n"
            "    print('won')\nexcept IllegalTransition:\n    print('lost')\n") % (str(REPO), str(run.paths.root))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outcomes = sorted(p.communicate()[0].strip() for p in procs)
    assert outcomes == ["lost"] * 5 + ["won"]
    assert (run.paths.root / record.LOCK_NAME).is_file()
    assert len(json.loads(run.paths.run_json.read_text())["attempts"]) == 2
