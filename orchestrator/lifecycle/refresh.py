"""A run's effective state: its own record, the backend's word, and its heartbeat.

The run folder is authoritative once an attempt has ended (the job wrapper wrote the outcome).
While it claims to be active, the backend is asked once for all such runs (one batched poll per
backend): a job the backend no longer knows, with no recorded outcome, died without a word
(SIGKILL, node failure); a RUNNING job whose heartbeat is older than `monitor.stall_after` is
STALLED. Everything here reads small files only, so `orch status` stays fast on huge trees.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from orchestrator.record.attempts import current_job_id
from orchestrator.backends import JobStatus, get_backend
from orchestrator.errors import OrchError
from orchestrator.record.heartbeat import heartbeat_age, read_heartbeat
from orchestrator.record.tree import Run
from orchestrator.record.states import State

DEFAULT_STALL_AFTER = 600.0


@dataclass
class RunView:
    """Everything `orch status` shows about one run."""

    run: Run
    state: State
    reason: Optional[str] = None
    heartbeat: dict[str, Any] = field(default_factory=dict)
    job: Optional[JobStatus] = None
    died: bool = False  # the backend lost the job and nothing was recorded

    @property
    def record(self) -> dict[str, Any]:
        return self.run.record


def _stall_after(run: Run) -> float:
    """Seconds without a heartbeat before a RUNNING run counts as STALLED (copied into run.json at submit)."""
    try:
        return float(run.record.get("stall_after", DEFAULT_STALL_AFTER))
    except (TypeError, ValueError):
        return DEFAULT_STALL_AFTER


def refresh(runs: Iterable[Run], *, poll: bool = True, now: Optional[float] = None) -> list[RunView]:
    """Effective states for many runs with one backend poll per backend."""
    runs = list(runs)
    now = now or time.time()
    active: dict[str, list[tuple[Run, str]]] = {}
    views: dict[str, RunView] = {}
    for run in runs:
        rec = run.record
        state = run.state
        views[run.run_id] = RunView(run, state, rec.get("pending_reason"))
        if state.active and poll:
            job_id = current_job_id(rec)
            if job_id:
                active.setdefault(rec.get("backend") or "local", []).append((run, job_id))
    for backend_name, items in active.items():
        try:
            statuses = get_backend(backend_name).poll([j for _, j in items])
        except OrchError as exc:  # scheduler down: show what the run folders say
            for run, _ in items:
                views[run.run_id].reason = f"backend unavailable: {exc.message}"
            continue
        for run, job_id in items:
            view = views[run.run_id]
            js = statuses.get(job_id)
            view.job = js
            if js is None or js.state is None:
                # The backend forgot the job: trust a late-written outcome, else it died silently.
                run.reload()
                view.state = run.state
                if view.state.active:
                    view.state, view.died = State.FAILED, True
                    view.reason = "job vanished without recording an exit (killed, or its node failed)"
                continue
            run.reload()
            if js.state.terminal and run.state.active:
                view.state = js.state  # e.g. cancelled while queued: the wrapper never ran
                view.reason = js.raw_state or view.reason
            elif js.state == State.QUEUED:
                view.state, view.reason = State.QUEUED, js.reason or view.reason
            elif js.raw_state != "alive":  # the scheduler's word beats a wrapper that has not started yet
                view.state = State.RUNNING if run.state != State.STALLED else run.state
            else:
                view.state = run.state  # local: alive; the wrapper's record says QUEUED or RUNNING
    for view in views.values():
        if view.state == State.FAILED and not (view.run.record.get("failure") or {}).get("diagnosed_at"):
            try:
                _diagnose(view)
            except OSError:  # someone else's read-only results tree: show what is there
                pass
        if view.state != State.PENDING:
            view.heartbeat = read_heartbeat(view.run.paths.fast("heartbeat"))
        if view.state in (State.RUNNING, State.STALLED):
            age = heartbeat_age(view.heartbeat, now)
            if age is not None and age > _stall_after(view.run):
                view.state = State.STALLED
                view.reason = f"no heartbeat for {int(age)} s"
            elif view.state == State.STALLED and age is not None:
                view.state = State.RUNNING
    return [views[r.run_id] for r in runs]


def _diagnose(view: RunView) -> None:
    """A failed run nobody classified yet (a job that died without a word): read its log tails once."""
    from orchestrator.checks.diagnose import diagnose_run, record_failure

    job = view.job
    if view.died:
        persist(view)
    elif job is not None and (job.exit_code is not None or job.signal is not None):
        _record_backend_exit(view, job)  # the wrapper never wrote one: the scheduler's word is all there is
    # A job that vanished without a recorded exit lost its wrapper: for diagnosis, a node failure.
    state = "NODE_FAIL" if view.died else (job.raw_state if job else None)
    d = diagnose_run(view.run, backend_state=state)
    record_failure(view.run, d)
    view.run.reload()


def _record_backend_exit(view: RunView, job: JobStatus) -> None:
    def mutate(rec: dict[str, Any]) -> None:
        if not State(rec.get("state", "PENDING")).terminal:
            rec["state"] = str(view.state)
        for att in rec.get("attempts", [])[-1:]:
            if att.get("exit_code") is None and att.get("signal") is None:
                att.update(exit_code=job.exit_code, signal=job.signal, state=str(view.state),
                           cause="killed" if job.signal else None)

    view.run.update(mutate)


def persist(view: RunView) -> bool:
    """Write a discovered state into run.json (monitor/resume/--wait do; plain status does not)."""
    if view.state == view.run.state:
        return False
    state, reason, died = view.state, view.reason, view.died

    def mutate(rec: dict[str, Any]) -> None:
        if State(rec.get("state", "PENDING")).terminal:
            return  # the job wrapper got there first
        rec["state"] = str(state)
        if died:
            rec["failure"] = {"class": "node_fail", "summary": reason}
            for att in rec.get("attempts", [])[-1:]:
                att.setdefault("state", str(State.FAILED))
                att.setdefault("cause", "node_fail")
        if reason:
            rec["state_reason"] = reason

    view.run.update(mutate)
    return True


def checks_summary(run: Run) -> Optional[str]:
    """'passed/total' from the copy `orch check` keeps in run.json: status never opens checks.json."""
    checks = run.record.get("checks")
    if isinstance(checks, dict) and isinstance(checks.get("summary"), str):
        return checks["summary"]
    return None
