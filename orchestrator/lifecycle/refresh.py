"""A run's effective state: its own record, the backend's word, and its heartbeat.

The run folder is authoritative once an attempt has ended (the job wrapper wrote the outcome).
While it claims to be active, the backend is asked once for all such runs (one batched poll per
backend). A job the backend no longer knows is judged from the run folder first (exit.json, a
cancel request, an attempt that never started: cancelled); only a started job with no recorded
outcome is taken to have died without a word (SIGKILL, node failure), marked inferred. A job the
scheduler holds again after its attempt ran is its own requeue (QUEUED, with the reason). A
RUNNING job whose heartbeat is older than `monitor.stall_after` is STALLED. A backend that does
not answer leaves the views stale (last known states, nothing decided on them). `refresh` writes
nothing; `persist` records a view through the run record's transitions. Everything here reads
small files only, so `orch status` stays fast on huge trees.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from orchestrator.record.atomicio import read_json, tail_jsonl
from orchestrator.record.record import FAILURE_CLASSES, attempt_n, current_attempt, current_job_id
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
    stale: Optional[str] = None  # the backend did not answer (why): the state shown is the last known one

    @property
    def record(self) -> dict[str, Any]:
        return self.run.record


def _stall_after(run: Run) -> float:
    """Seconds without a heartbeat before a RUNNING run counts as STALLED (copied into run.json at submit)."""
    try:
        return float(run.record.get("stall_after", DEFAULT_STALL_AFTER))
    except (TypeError, ValueError):
        return DEFAULT_STALL_AFTER


def refresh(runs: Iterable[Run], *, poll: bool = True, now: Optional[float] = None,
            strict: bool = False) -> list[RunView]:
    """Effective states for many runs with one backend poll per backend.

    A backend that does not answer marks its runs' views `stale` (the state shown is the last one
    known: the scheduler's last answer, else the run folder's) or, with `strict`, raises
    BackendUnavailable (exit code 3) for commands that cannot act without it (cancel, resume).
    """
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
        stale: Optional[str] = None
        try:
            statuses = get_backend(backend_name).poll([j for _, j in items])
        except OrchError as exc:
            if strict:
                raise
            stale = exc.message
            statuses = getattr(exc, "last_known", None) or {}
        for run, job_id in items:
            view = views[run.run_id]
            view.stale = stale
            _apply(view, statuses.get(job_id))
            if stale:
                view.reason = f"stale (backend unavailable: {stale})" + (f"; {view.reason}" if view.reason else "")
    for view in views.values():
        if view.state == State.FAILED and not (view.run.record.get("failure") or {}).get("diagnosed_at"):
            view.failure = view.failure or _diagnose(view)
        if view.state != State.PENDING:
            view.heartbeat = read_heartbeat(view.run.paths.fast("heartbeat"))
        if view.state in (State.RUNNING, State.STALLED):
            _fill_measured(view)
        if view.state in (State.RUNNING, State.STALLED) and not view.stale:
            age = heartbeat_age(view.heartbeat, now)
            if age is not None and age > _stall_after(view.run):
                view.state = State.STALLED
                view.reason = f"no heartbeat for {int(age)} s"
            elif view.state == State.STALLED and age is not None:
                view.state = State.RUNNING
    return [views[r.run_id] for r in runs]


def _fill_measured(view: RunView) -> None:
    """A live run's heartbeat from a phase that measures nothing (an evaluation or a checkpoint
    before any training beat carried the numbers): the last training log line gives the current
    loss, tokens/s and, from its step time, the ETA. Read only when the heartbeat lacks them."""
    hb = view.heartbeat
    if hb.get("tokens_per_sec") is not None and hb.get("train_loss") is not None:
        return
    tail = tail_jsonl(view.run.paths.fast("diagnostics"), 1)
    if not tail:
        return
    last = tail[0]
    hb = view.heartbeat = dict(hb)
    if hb.get("tokens_per_sec") is None and isinstance(last.get("tokens_per_sec"), (int, float)):
        hb["tokens_per_sec"] = last["tokens_per_sec"]
    if hb.get("train_loss") is None and isinstance(last.get("loss"), (int, float)):
        hb["train_loss"] = last["loss"]
    total = hb.get("total_steps") or view.record.get("total_steps")
    step, step_time = last.get("step"), last.get("step_time")
    if hb.get("eta_s") is None and all(isinstance(v, (int, float)) for v in (total, step, step_time)):
        hb["eta_s"] = max(0.0, (total - step) * step_time)


def _apply(view: RunView, js: Optional[JobStatus]) -> None:
    """The backend's word on one active run's job, weighed against the run folder."""
    run = view.run
    run.reload()
    view.job = js
    view.state = run.state
    if not run.state.active:
        return  # the job wrapper recorded the outcome meanwhile: its word wins
    att = current_attempt(run.record) or {}
    if js is None or js.state is None:
        if not view.stale:  # a backend that did not answer forgot nothing
            _unknown(view, att)
        return
    if js.state.terminal:
        view.state, view.reason = js.state, js.raw_state or view.reason  # e.g. cancelled while queued
        cls = _CLASS_OF_STATE.get(js.state)
        if cls is None and att.get("ended_at"):  # its requeue ended before it ran: no log of it to read
            raw = (js.raw_state or "").split(" ", 1)[0].lower()
            cls = raw if raw in FAILURE_CLASSES else "unknown"
        if cls and view.failure is None:
            view.failure = {"class": cls, "summary": f"the scheduler says {js.raw_state or js.state}"
                            + (" (its requeue never started)" if att.get("ended_at") else ""),
                            "exit_code": js.exit_code, "signal": js.signal}
    elif js.state == State.QUEUED:
        view.state = State.QUEUED
        if att.get("started_at"):  # its attempt ran already: the scheduler requeued the job (a node failure)
            why = run.record.get("pending_reason") or "requeued by the scheduler"
            view.reason = f"{why}; waiting: {js.reason}" if js.reason else why
        else:
            view.reason = js.reason or view.reason
    elif js.raw_state != "alive":  # the scheduler's word beats a wrapper that has not started yet
        view.state = State.RUNNING if run.state != State.STALLED else run.state
        view.reason = None if view.state == State.RUNNING else view.reason
    # local: alive; the wrapper's record says QUEUED or RUNNING


def _unknown(view: RunView, att: dict[str, Any]) -> None:
    """The backend no longer knows an active run's job (aged out of squeue, no accounting): what the
    run folder says, before any guess. The wrapper's exit.json (written just before run.json); a
    cancel request from `orch cancel`; an attempt that never started (nor its requeue) left the
    queue unrun: CANCELLED, the only way a queued job leaves a queue without running. Only a job
    whose wrapper started and recorded nothing is guessed (a node failure or a kill), inferred."""
    run = view.run
    ended = read_json(run.paths.exit_status, default=None)
    if isinstance(ended, dict) and ended.get("attempt") == att.get("n") and not ended.get("requeued"):
        try:
            view.state = State(str(ended.get("state")))
            view.reason = f"recorded in exit.json ({ended.get('cause') or ended.get('state')})"
            return
        except ValueError:
            pass
    request = _stop_request(run)
    if request is not None and not request.startswith("stalled"):
        view.state, view.reason = State.CANCELLED, request
        view.failure = {"class": "cancelled", "summary": request}
        return
    if not att.get("started_at") or att.get("ended_at"):
        view.state = State.CANCELLED
        view.reason = ("left the queue without starting and the scheduler no longer knows it "
                       "(no accounting): taken as cancelled")
        view.failure = {"class": "cancelled", "summary": view.reason, "inferred": True}
        return
    view.state, view.died = State.FAILED, True
    view.reason = "job vanished without recording an exit (killed, or its node failed)"


def _stop_request(run: Run) -> Optional[str]:
    try:
        return run.paths.cancel_request.read_text(encoding="utf-8", errors="replace").strip() or "cancelled"
    except OSError:
        return None


def _diagnose(view: RunView) -> Optional[dict[str, Any]]:
    """A failed run nobody classified yet (a job that died without a word): read its log tails, in
    memory only. `orch status` writes nothing; `persist` (monitor, resume, --wait) records it."""
    from orchestrator.checks.diagnose import diagnose_run

    job = view.job
    # A job that vanished without a recorded exit lost its wrapper: for diagnosis, a node failure.
    state = "VANISHED" if view.died else (job.raw_state if job else None)
    code = job.exit_code if job is not None and not view.died else None
    sig = job.signal if job is not None and not view.died else None
    try:
        d = diagnose_run(view.run, backend_state=state, exit_code=code, signal=sig)
    except OSError:
        return None
    if view.died or (job is not None and (job.exit_code is not None or job.signal is not None)):
        d.summary = d.summary or (view.reason or "")
    out = d.to_dict()
    if view.died:
        out["inferred"] = True
    return out


_CLASS_OF_STATE = {State.CANCELLED: "cancelled", State.TIMEOUT: "timeout", State.PREEMPTED: "preempted"}


def persist(view: RunView) -> bool:
    """Record what `refresh` discovered (STALLED, recovered, vanished, the scheduler's exit, its own
    requeue) through the run record's transitions; False when nothing changed, the backend did not
    answer (a stale view records nothing), or the run moved on meanwhile."""
    from orchestrator.record import record

    run = view.run
    if view.stale:
        return False
    n = attempt_n(run.record)
    before = run.state
    if view.state == before:
        return False
    att = current_attempt(run.record) or {}
    if view.state == State.STALLED and before == State.RUNNING:
        return record.stall(run, n, view.reason or "no heartbeat")
    if view.state == State.RUNNING and before == State.STALLED:
        return record.recover(run, n)
    if (view.state == State.QUEUED and before in (State.RUNNING, State.STALLED) and att.get("started_at")
            and not att.get("ended_at")):
        # The scheduler requeued the job while its wrapper recorded nothing (it died with its node):
        # the attempt ended; the requeued job is the next one. Nothing is resubmitted.
        try:
            record.finish(run, n, State.FAILED, cause="node_fail", requeue=True)
        except record.IllegalTransition:
            return False
        return True
    if view.state.terminal and before.active:
        job = view.job
        failure = view.failure or {}
        cls = failure.get("class") or ("node_fail" if view.died else _CLASS_OF_STATE.get(view.state))
        summary = failure.get("summary") or view.reason or ""
        code = job.exit_code if job is not None else None
        sig = job.signal if job is not None else None
        inferred = bool(failure.get("inferred")) or (view.died and code is None and sig is None)
        if att.get("ended_at"):  # a requeue was pending: its job ended before it started again
            return record.requeue_ended(run, n, view.state, cls=cls, summary=summary, exit_code=code,
                                        signal=sig, inferred=inferred)
        changed = record.vanish(run, n, view.state, cls=cls, summary=summary, exit_code=code, signal=sig)
        if changed and failure:
            from orchestrator.record.record import Failure, IllegalTransition

            f = Failure.from_dict({**failure, "attempt": n})
            if f is not None:
                f.inferred = inferred
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
