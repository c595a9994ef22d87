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

from orchestrator.record.record import attempt_n, current_job_id
from orchestrator.backends import JobStatus, get_backend
from orchestrator.backends.registry import DEFAULT as DEFAULT_BACKEND
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
    failure: Optional[dict[str, Any]] = None  # a diagnosis made in memory (status writes nothing)

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
                active.setdefault(rec.get("backend") or DEFAULT_BACKEND, []).append((run, job_id))
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
            view.failure = _diagnose(view)
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


def _diagnose(view: RunView) -> Optional[dict[str, Any]]:
    """A failed run nobody classified yet (a job that died without a word): read its log tails, in
    memory only. `orch status` writes nothing; `persist` (monitor, resume, --wait) records it."""
    from orchestrator.checks.diagnose import diagnose_run

    job = view.job
    # A job that vanished without a recorded exit lost its wrapper: for diagnosis, a node failure.
    state = "VANISHED" if view.died else (job.raw_state if job else None)
    try:
        d = diagnose_run(view.run, backend_state=state)
    except OSError:
        return None
    if view.died or (job is not None and (job.exit_code is not None or job.signal is not None)):
        d.summary = d.summary or (view.reason or "")
    return d.to_dict()


_CLASS_OF_STATE = {State.CANCELLED: "cancelled", State.TIMEOUT: "timeout", State.PREEMPTED: "preempted"}


def persist(view: RunView) -> bool:
    """Record what `refresh` discovered (STALLED, recovered, vanished, the scheduler's exit) through
    the run record's transitions; False when nothing changed or the run moved on meanwhile."""
    from orchestrator.record import record

    run = view.run
    n = attempt_n(run.record)
    before = run.state
    if view.state == before:
        return False
    if view.state == State.STALLED and before == State.RUNNING:
        return record.stall(run, n, view.reason or "no heartbeat")
    if view.state == State.RUNNING and before == State.STALLED:
        return record.recover(run, n)
    if view.state.terminal and before.active:
        job = view.job
        failure = view.failure or {}
        cls = failure.get("class") or ("node_fail" if view.died else _CLASS_OF_STATE.get(view.state))
        summary = failure.get("summary") or view.reason or ""
        code = job.exit_code if job is not None else None
        sig = job.signal if job is not None else None
        changed = record.vanish(run, n, view.state, cls=cls, summary=summary, exit_code=code, signal=sig)
        if changed and failure:
            from orchestrator.record.record import Failure, IllegalTransition

            f = Failure.from_dict({**failure, "attempt": n})
            if f is not None:
                f.inferred = code is None and sig is None
                try:
                    record.record_failure(run, f)
                except IllegalTransition:
                    pass
        return changed
    return False


def checks_summary(run: Run) -> Optional[str]:
    """'passed/total' from the copy `orch check` keeps in run.json: status never opens checks.json."""
    checks = run.record.get("checks")
    if isinstance(checks, dict) and isinstance(checks.get("summary"), str):
        return checks["summary"]
    return None
