"""The run record (`run.json`): typed, and changed only through named, guarded transitions.

This module is the only writer of a run's `state`. Every change is a *transition* with a name
(`submit`, `claim`, `finish`, `requeue`, `cancel`, `vanish`, `stall`, ...) that reads the record
under the run's lock, checks that the run is in a state the transition expects (and, where it
matters, that the attempt it acts on is still the current one), applies the change and writes
`run.json` back atomically. A transition that finds the run elsewhere raises `IllegalTransition`
and writes nothing: whoever loses a race (two `orch resume`, a resume against `orch monitor`, a
requeued job against a resubmission) is told so and does nothing. Terminal states are never
overwritten unless a transition says so explicitly (`resubmit` opens a new attempt of a stopped
run; `finish(force=True)`).

The record keeps keys it does not know (written by other versions or by annotations such as the
monitor's marker), so a newer orch and an older one can share a results tree.

Locking: one lock file per run (`.lock` in the run folder, through `filelock`). A lock file opened
for writing works on the shared filesystems clusters use (NFS v3 with lockd, NFS v4, Lustre,
GPFS), where an exclusive `flock` on the directory itself does not.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, TypeVar

from orchestrator.errors import IllegalTransition, RecordDamaged
from orchestrator.record.atomicio import atomic_write_json
from orchestrator.record.states import ACTIVE, TERMINAL, State

if TYPE_CHECKING:
    from orchestrator.record.tree import Run

T = TypeVar("T")
LOCK_NAME = ".lock"
LOCK_TIMEOUT = float(os.environ.get("ORCH_LOCK_TIMEOUT", "120"))


class FailureClass(str, Enum):
    """Why an attempt ended badly: one table for diagnosis, the spec's `retry.on`, monitor and status."""

    PREEMPTED = "preempted"
    TIMEOUT = "timeout"
    NODE_FAIL = "node_fail"
    OOM = "oom"
    NCCL = "nccl"
    STALLED = "stalled"
    KILLED = "killed"
    DIVERGED = "diverged"
    DATA_ERROR = "data_error"
    USER_ERROR = "user_error"
    DISK_FULL = "disk_full"
    IO_ERROR = "io_error"
    CANCELLED = "cancelled"
    DEPENDENCY = "dependency"  # an `after:` run did not complete
    SUBMIT_ERROR = "submit_error"  # the backend refused the job
    WRAPPER_ERROR = "wrapper_error"  # orch's own job wrapper broke
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


FAILURE_CLASSES: tuple[str, ...] = tuple(c.value for c in FailureClass)
# Classes decided by orch itself (submitter, wrapper, cancel): there is nothing in the logs to diagnose.
NOT_DIAGNOSED = frozenset({FailureClass.CANCELLED, FailureClass.DEPENDENCY, FailureClass.SUBMIT_ERROR})


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ typed record
def _known(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


@dataclass
class Failure:
    """How a run failed: a class, a summary and the evidence lines that show it."""

    cls: str = FailureClass.UNKNOWN.value
    summary: str = ""
    attempt: Optional[int] = None
    evidence: Optional[list[str]] = None
    exception: Optional[str] = None
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    diagnosed_at: Optional[str] = None
    inferred: bool = False  # guessed without the wrapper's word (a job that vanished), not observed
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]) -> Optional["Failure"]:
        if not isinstance(d, dict):
            return None
        d = dict(d)
        d["cls"] = d.pop("class", FailureClass.UNKNOWN.value)
        known, extra = _known(cls, d)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class": self.cls, "summary": self.summary}
        for k in ("attempt", "evidence", "exception", "exit_code", "signal", "diagnosed_at"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        if self.inferred:
            out["inferred"] = True
        out.update(self.extra)
        return out


@dataclass
class Attempt:
    """One try at running the job: submitted, started, ended (a Slurm requeue is a new attempt)."""

    n: int
    backend: Optional[str] = None
    job_id: Optional[str] = None
    reason: str = "submit"
    submitted_at: Optional[str] = None
    started_at: Optional[str] = None
    ended_at: Optional[str] = None
    host: Optional[str] = None
    pid: Optional[int] = None
    restart_count: Optional[int] = None
    state: Optional[str] = None
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    cause: Optional[str] = None
    failure_class: Optional[str] = None
    error: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Attempt":
        known, extra = _known(cls, d)
        known.setdefault("n", 0)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra" and v is not None}
        out.update(self.extra)
        return out

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


@dataclass
class RunRecord:
    """The whole of run.json, typed. Unknown keys survive a round trip in `extra`."""

    run_id: str
    name: str
    state: State = State.PENDING
    attempts: list[Attempt] = field(default_factory=list)
    backend: Optional[str] = None
    failure: Optional[Failure] = None
    pending_reason: Optional[str] = None
    state_reason: Optional[str] = None
    stop_reason: Optional[str] = None
    exit_code: Optional[int] = None
    ended_at: Optional[str] = None
    created_at: Optional[str] = None
    created_ns: Optional[int] = None
    updated_at: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, *, where: str = "run.json") -> "RunRecord":
        if not isinstance(d, dict):
            raise RecordDamaged(f"{where}: expected a JSON object, found {type(d).__name__}")
        d = dict(d)
        raw_state = d.pop("state", State.PENDING.value)
        try:
            state = State(raw_state)
        except ValueError:
            raise RecordDamaged(f"{where}: unknown state {raw_state!r}") from None
        attempts_raw = d.pop("attempts", None) or []
        if not isinstance(attempts_raw, list) or not all(isinstance(a, dict) for a in attempts_raw):
            raise RecordDamaged(f"{where}: 'attempts' is not a list of objects")
        failure_raw = d.pop("failure", None)
        if failure_raw is not None and not isinstance(failure_raw, dict):
            raise RecordDamaged(f"{where}: 'failure' is not an object")
        failure = Failure.from_dict(failure_raw)
        known, extra = _known(cls, d)
        known.setdefault("run_id", "")
        known.setdefault("name", "")
        return cls(**known, state=state, attempts=[Attempt.from_dict(a) for a in attempts_raw],
                    failure=failure, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run_id": self.run_id, "name": self.name, "state": self.state.value}
        for k in ("backend", "pending_reason", "state_reason", "stop_reason", "exit_code", "ended_at",
                  "created_at", "created_ns", "updated_at"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        out["attempts"] = [a.to_dict() for a in self.attempts]
        if self.failure is not None:
            out["failure"] = self.failure.to_dict()
        out.update(self.extra)
        return out

    @property
    def current(self) -> Optional[Attempt]:
        return self.attempts[-1] if self.attempts else None

    @property
    def current_n(self) -> int:
        return self.attempts[-1].n if self.attempts else 0

    def attempt(self, n: int) -> Attempt:
        for att in self.attempts:
            if att.n == n:
                return att
        raise IllegalTransition(f"run {self.run_id} has no attempt {n}")

    def _open(self, backend: Optional[str], reason: str, job_id: Optional[str] = None) -> Attempt:
        att = Attempt(n=self.current_n + 1, backend=backend, job_id=job_id, reason=reason, submitted_at=now_iso())
        self.attempts.append(att)
        if backend:
            self.backend = backend
        self.state = State.QUEUED
        self.failure = None
        self.exit_code = self.ended_at = self.pending_reason = self.state_reason = None
        self.extra.pop("checks", None)  # the verdict on the previous attempt (`orch check` judges the new one)
        return att


# ------------------------------------------------------------------------------ transitions
def _lock(run: "Run") -> Any:
    from filelock import FileLock

    return FileLock(str(run.paths.root / LOCK_NAME), timeout=LOCK_TIMEOUT)


def _expect(rec: RunRecord, action: str, allowed: Iterable[State]) -> None:
    allowed = frozenset(allowed)
    if rec.state not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise IllegalTransition(f"cannot {action} run {rec.run_id or '?'}: it is {rec.state} (expected {names})",
                                hint="someone else may have acted on it first; `orch status` shows it now")


def _expect_attempt(rec: RunRecord, action: str, n: Optional[int]) -> Attempt:
    cur = rec.current
    if cur is None or (n is not None and cur.n != n):
        have = cur.n if cur else 0
        raise IllegalTransition(f"cannot {action} run {rec.run_id}: attempt {n} is no longer current "
                                f"(the record is at attempt {have})")
    return cur


class _Unchanged(Exception):
    """Raised inside a transition that finds nothing to do: transact returns `value`, writes nothing."""

    def __init__(self, value: Any = False) -> None:
        self.value = value


def transact(run: "Run", fn: Callable[[RunRecord], T]) -> T:
    """Apply `fn` to the typed record under the run's lock and write it back atomically.

    `fn` raises IllegalTransition to refuse (nothing is written). Used by the transitions below;
    other modules call the named transitions, or `annotate` for keys that are not the state.
    """
    where = str(run.paths.run_json)
    with _lock(run):
        raw = read_json_strict(run.paths.run_json, where=where)
        rec = RunRecord.from_dict(raw, where=where)
        try:
            result = fn(rec)
        except _Unchanged as nothing:
            run._record = raw
            return nothing.value  # type: ignore[no-any-return]
        rec.updated_at = now_iso()
        data = rec.to_dict()
        atomic_write_json(run.paths.run_json, data)
    run._record = data
    return result


def annotate(run: "Run", mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Change keys of run.json that are not the run's state (monitor markers, check summaries,
    adjustments), under the lock. The state, attempts and failure cannot change here."""
    guarded = ("state", "attempts", "failure")
    where = str(run.paths.run_json)
    with _lock(run):
        data = read_json_strict(run.paths.run_json, where=where)
        RunRecord.from_dict(data, where=where)  # refuse to annotate a damaged record
        before = json.dumps([data.get(k) for k in guarded], sort_keys=True, default=str)
        mutate(data)
        if json.dumps([data.get(k) for k in guarded], sort_keys=True, default=str) != before:
            raise IllegalTransition(f"annotate may not change the state, attempts or failure of {where}")
        data["updated_at"] = now_iso()
        atomic_write_json(run.paths.run_json, data)
    run._record = data
    return data


def read_json_strict(path: Any, *, where: str) -> Any:
    """run.json's content; RecordDamaged (with the reason) when it is missing, unreadable or not JSON."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise RecordDamaged(f"{where}: missing") from None
    except OSError as exc:
        raise RecordDamaged(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordDamaged(f"{where}: not valid JSON ({'empty file' if not raw.strip() else exc})") from None


def create(run_id: str, name: str, **extra: Any) -> RunRecord:
    """A new record (PENDING, no attempts); written by ResultsRoot.create_run into a fresh folder."""
    return RunRecord(run_id=run_id, name=name, state=State.PENDING, created_at=now_iso(),
                     created_ns=time.time_ns(),
                     extra={"created_by": f"{os.environ.get('USER', '?')}@{socket.gethostname()}", **extra})


STOPPED = frozenset({State.FAILED, State.CANCELLED, State.TIMEOUT, State.PREEMPTED})


def submit(run: "Run", backend: str, *, reason: str = "submit", job_id: Optional[str] = None) -> int:
    """PENDING -> QUEUED: the first attempt, recorded before the job can start."""

    def t(rec: RunRecord) -> int:
        _expect(rec, "submit", {State.PENDING})
        return rec._open(backend, reason, job_id).n

    return transact(run, t)


def resubmit(run: "Run", backend: str, *, after_attempt: int, reason: str) -> int:
    """A stopped run -> QUEUED with a new attempt, only if `after_attempt` is still the current one:
    of two callers that saw the same stopped attempt (resume vs monitor), exactly one wins."""

    def t(rec: RunRecord) -> int:
        _expect(rec, "resubmit", STOPPED)
        _expect_attempt(rec, "resubmit", after_attempt)
        from_state = rec.state
        att = rec._open(backend, "resubmit" if not reason else reason)
        rec.extra.setdefault("resumes", []).append({"from_state": from_state.value, "reason": reason,
                                                    "attempt": att.n, "at": att.submitted_at})
        return att.n

    return transact(run, t)


def set_job_id(run: "Run", n: int, job_id: str) -> None:
    """The backend's job id for attempt n (a job that started first may have recorded it already)."""

    def t(rec: RunRecord) -> None:
        att = rec.attempt(n)
        if att.job_id and att.job_id != job_id:
            raise IllegalTransition(f"attempt {n} of run {rec.run_id} already has job {att.job_id}, not {job_id}")
        att.job_id = job_id

    transact(run, t)


def submitted(run: "Run", backend: str, job_id: str, *, reason: str = "submit") -> int:
    """One update after a batch submission (sbatch): the first attempt with its job id, or the job id
    for the attempt a job that started first opened already."""

    def t(rec: RunRecord) -> int:
        cur = rec.current
        if cur is not None and cur.job_id == job_id:
            cur.submitted_at = cur.submitted_at or now_iso()
            return cur.n
        if cur is not None and cur.job_id is None and not cur.ended and rec.state in (State.QUEUED, State.RUNNING):
            cur.job_id = job_id
            return cur.n
        _expect(rec, "submit", {State.PENDING})
        return rec._open(backend, reason, job_id).n

    return transact(run, t)


def submit_failed(run: "Run", backend: str, error: str, *, n: Optional[int] = None) -> None:
    """The backend refused the job (or it was never submitted): FAILED, class submit_error."""

    def t(rec: RunRecord) -> None:
        _expect(rec, "record a failed submission of", {State.PENDING, State.QUEUED})
        if rec.state == State.PENDING:
            att = rec._open(backend, "submit")
        else:
            att = _expect_attempt(rec, "record a failed submission of", n)
        att.state, att.error, att.ended_at = State.FAILED.value, error, now_iso()
        rec.state = State.FAILED
        rec.failure = Failure(FailureClass.SUBMIT_ERROR.value, error, attempt=att.n)

    transact(run, t)


def waiting(run: "Run", reason: str) -> None:
    """QUEUED with a reason (a local slot, a dependency) before the job claims its attempt."""

    def t(rec: RunRecord) -> None:
        _expect(rec, "mark waiting", {State.PENDING, State.QUEUED})
        rec.state, rec.pending_reason = State.QUEUED, reason

    transact(run, t)


def claim(run: "Run", *, job_id: Optional[str], backend: str, host: Optional[str] = None,
          pid: Optional[int] = None, restart_count: int = 0) -> int:
    """The job starts: QUEUED -> RUNNING on the current attempt, or a new attempt when the current
    one already started (the scheduler requeued the same job id). Refused when the record names a
    different job (a stale twin must not train) or the run was cancelled or stopped meanwhile."""

    def t(rec: RunRecord) -> int:
        _expect(rec, "start", {State.PENDING, State.QUEUED})
        cur = rec.current
        if cur is not None and job_id and cur.job_id and cur.job_id != job_id:
            raise IllegalTransition(f"job {job_id} is not run {rec.run_id}'s current job ({cur.job_id}, "
                                    f"attempt {cur.n}): refusing to start a second copy")
        if cur is None or cur.started_at:
            cur = rec._open(backend, "requeue" if rec.attempts else "submit", job_id or (cur.job_id if cur else None))
        cur.started_at = now_iso()
        cur.host = host or socket.gethostname()
        cur.pid = pid
        cur.restart_count = restart_count
        if job_id and not cur.job_id:
            cur.job_id = job_id
        rec.state = State.RUNNING
        rec.pending_reason = rec.stop_reason = rec.state_reason = None
        return cur.n

    return transact(run, t)


def finish(run: "Run", n: int, state: State, *, exit_code: Optional[int] = None, signal: Optional[int] = None,
           cause: Optional[str] = None, failure: Optional[Failure] = None, requeue: bool = False,
           force: bool = False) -> State:
    """Attempt n ended (the wrapper's word): RUNNING/STALLED -> a terminal state, or QUEUED when the
    job is requeued. A run already CANCELLED stays CANCELLED (the cancel won); returns the state kept."""

    def t(rec: RunRecord) -> State:
        att = _expect_attempt(rec, "finish", n)
        if rec.state.terminal and not force and (att.exit_code is not None or att.signal is not None):
            raise IllegalTransition(f"attempt {n} of run {rec.run_id} already finished ({rec.state})")
        ended = now_iso()
        att.ended_at, att.exit_code, att.signal, att.state, att.cause = ended, exit_code, signal, state.value, cause
        if rec.state.terminal and not force:
            return rec.state  # cancelled (or stopped) meanwhile: the attempt is recorded, the state stays
        if not force:
            _expect(rec, "finish", ACTIVE)
        rec.exit_code, rec.ended_at = exit_code, ended
        if requeue:
            rec.state, rec.pending_reason = State.QUEUED, f"requeued after {cause}"
            att.extra["requeued"] = True
            rec.failure = None
            return rec.state
        rec.state = state
        if state == State.COMPLETED:  # a note about an earlier attempt must not stick to a success
            rec.failure = rec.state_reason = None
        elif cause or failure:
            rec.failure = failure or Failure(cause or FailureClass.UNKNOWN.value, f"attempt {n}: {cause}", attempt=n)
            if failure is not None:
                att.failure_class = failure.cls
        return rec.state

    return transact(run, t)


def dependency_failed(run: "Run", summary: str) -> None:
    """An `after:` run ended badly: this run never starts (CANCELLED, class dependency)."""

    def t(rec: RunRecord) -> None:
        _expect(rec, "cancel for a dependency", {State.PENDING, State.QUEUED})
        rec.state, rec.pending_reason = State.CANCELLED, None
        rec.failure = Failure(FailureClass.DEPENDENCY.value, summary, attempt=rec.current_n or None)

    transact(run, t)


def cancel(run: "Run", reason: str = "cancelled by orch cancel", *, n: Optional[int] = None) -> None:
    """An active run -> CANCELLED. A run that is already terminal is refused (`already COMPLETED`)."""

    def t(rec: RunRecord) -> None:
        _expect(rec, "cancel", ACTIVE)
        if n is not None:
            _expect_attempt(rec, "cancel", n)
        rec.state, rec.pending_reason, rec.state_reason = State.CANCELLED, None, reason
        cur = rec.current
        if cur is not None and not cur.ended:
            cur.ended_at, cur.state, cur.cause = now_iso(), State.CANCELLED.value, FailureClass.CANCELLED.value
        rec.failure = Failure(FailureClass.CANCELLED.value, reason, attempt=rec.current_n or None)

    transact(run, t)


def wrapper_error(run: "Run", summary: str) -> None:
    """orch's own job wrapper broke: FAILED (class wrapper_error) unless already terminal."""

    def t(rec: RunRecord) -> None:
        if rec.state.terminal:
            return
        rec.state = State.FAILED
        rec.failure = Failure(FailureClass.WRAPPER_ERROR.value, summary, attempt=rec.current_n or None)

    transact(run, t)


def stall(run: "Run", n: int, reason: str) -> bool:
    """RUNNING -> STALLED (the heartbeat is too old). False when the run moved on meanwhile."""

    def t(rec: RunRecord) -> bool:
        if rec.state != State.RUNNING or rec.current_n != n:
            raise _Unchanged(False)
        rec.state, rec.state_reason = State.STALLED, reason
        return True

    return transact(run, t)


def recover(run: "Run", n: int) -> bool:
    """STALLED -> RUNNING (the heartbeat is fresh again)."""

    def t(rec: RunRecord) -> bool:
        if rec.state != State.STALLED or rec.current_n != n:
            raise _Unchanged(False)
        rec.state, rec.state_reason = State.RUNNING, None
        return True

    return transact(run, t)


def stop_stalled(run: "Run", n: int, reason: str) -> bool:
    """STALLED -> FAILED (class stalled) after the monitor stopped the job; False if the wrapper
    recorded an outcome first."""

    def t(rec: RunRecord) -> bool:
        if rec.state != State.STALLED or rec.current_n != n or (rec.current and rec.current.ended):
            raise _Unchanged(False)
        att = rec.attempt(n)
        att.ended_at, att.state, att.cause = now_iso(), State.FAILED.value, FailureClass.STALLED.value
        rec.state, rec.ended_at = State.FAILED, att.ended_at
        rec.failure = Failure(FailureClass.STALLED.value, reason, attempt=n)
        return True

    return transact(run, t)


def vanish(run: "Run", n: int, state: State, *, cls: Optional[str], summary: str,
           exit_code: Optional[int] = None, signal: Optional[int] = None) -> bool:
    """The backend no longer runs attempt n and the wrapper recorded nothing: the scheduler's word
    (or, without one, an inference, marked as such). Only from an active state: a late-written
    outcome of the wrapper always wins. False when the run moved on meanwhile."""

    def t(rec: RunRecord) -> bool:
        if not rec.state.active or rec.current_n != n or (rec.current and rec.current.ended):
            raise _Unchanged(False)
        att = rec.attempt(n)
        att.ended_at, att.state, att.exit_code, att.signal, att.cause = (now_iso(), state.value, exit_code,
                                                                          signal, cls)
        rec.state, rec.ended_at, rec.state_reason, rec.exit_code = state, att.ended_at, summary, exit_code
        rec.pending_reason = None
        if cls and state != State.COMPLETED:
            rec.failure = Failure(cls, summary, attempt=n, exit_code=exit_code, signal=signal,
                                  inferred=exit_code is None and signal is None)
        return True

    return transact(run, t)


def requeue_ended(run: "Run", n: int, state: State, *, cls: Optional[str], summary: str,
                  exit_code: Optional[int] = None, signal: Optional[int] = None, inferred: bool = False) -> bool:
    """The job the scheduler requeued after attempt n ended before it started again (cancelled while
    it waited, or it failed before a wrapper claimed it): attempt n+1 is recorded as never started
    and ended with that state, so the note belongs to it, not to attempt n. False when the run moved
    on meanwhile (the requeued job started, or someone recorded its end first)."""

    def t(rec: RunRecord) -> bool:
        cur = rec.current
        if rec.state != State.QUEUED or cur is None or cur.n != n or not cur.ended or not cur.extra.get("requeued"):
            raise _Unchanged(False)
        att = rec._open(cur.backend, "requeue", cur.job_id)
        att.ended_at, att.state, att.exit_code, att.signal, att.cause = (now_iso(), state.value, exit_code,
                                                                          signal, cls)
        rec.state, rec.ended_at, rec.state_reason, rec.exit_code = state, att.ended_at, summary, exit_code
        if cls and state != State.COMPLETED:
            rec.failure = Failure(cls, summary, attempt=att.n, exit_code=exit_code, signal=signal, inferred=inferred)
        return True

    return transact(run, t)


def record_failure(run: "Run", failure: Failure) -> None:
    """Attach a diagnosis to the run and its attempt (not a state change: the run stays stopped)."""

    def t(rec: RunRecord) -> None:
        if rec.state.active:
            raise IllegalTransition(f"run {rec.run_id} is {rec.state}: nothing to diagnose yet")
        if failure.attempt is not None and failure.attempt != rec.current_n:
            raise IllegalTransition(f"diagnosis of attempt {failure.attempt} is stale (run {rec.run_id} "
                                    f"is at attempt {rec.current_n})")
        rec.failure = failure
        if rec.current is not None:
            rec.current.failure_class = failure.cls

    transact(run, t)


# ------------------------------------------------------------------------------ readers
def current_attempt(rec: dict[str, Any]) -> Optional[dict[str, Any]]:
    attempts = rec.get("attempts") or []
    return attempts[-1] if attempts and isinstance(attempts[-1], dict) else None


def current_job_id(rec: dict[str, Any]) -> Optional[str]:
    att = current_attempt(rec)
    return att.get("job_id") if att else None


def attempt_n(rec: dict[str, Any]) -> int:
    att = current_attempt(rec)
    try:
        return int(att.get("n") or 0) if att else 0
    except (TypeError, ValueError):
        return 0


__all__ = [
    "Attempt", "Failure", "FailureClass", "FAILURE_CLASSES", "IllegalTransition", "RecordDamaged", "RunRecord",
    "STOPPED", "TERMINAL", "annotate", "attempt_n", "cancel", "claim", "create", "current_attempt",
    "current_job_id", "dependency_failed", "finish", "now_iso", "record_failure", "recover", "requeue_ended",
    "resubmit",
    "stall", "stop_stalled", "submit", "submit_failed", "submitted", "transact", "vanish", "waiting",
    "wrapper_error", "set_job_id",
]
