"""One monitoring pass over a results tree, safe to start from cron every few minutes.

Why: overnight runs fail, stall or get preempted while nobody watches. A pass refreshes every
active run (one batched poll per backend, via `status.refresh`), marks STALLED runs, diagnoses
runs that ended badly, applies the spec's `retry:` policy (a new attempt that resumes from the
newest checkpoint, with exponential back-off, optionally halving the batch after an OOM), runs
checks on finished runs, preserves them when `preserve.auto` is on, and reports what changed.

Safety: the pass holds `results/.monitor.lock` (non-blocking: an overlapping cron invocation
exits quietly), and each run is handled under its own `.monitor.lock` with a marker in run.json
naming the attempt already handled, so a pass is idempotent and a failed attempt is retried at
most once. Every action is appended to `results/events.jsonl`.

Cost: the pass lists the tree through the run index (`orchestrator.record.index`): a finished run
whose run.json is unchanged since it was indexed, and whose attempt a pass already handled, is not
read again; active runs, changed runs and the few still awaiting a retry are.

Robustness: damaged run folders (run.json missing, unreadable, not a record; a folder of another
user) are named in `PassResult.damaged` and left alone; a run that breaks its own handling (a
damaged spec.yaml, a folder we may not write, a full disk) gets one `monitor_error` event per
distinct problem and the pass goes on with the other runs.
"""
from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from orchestrator.record.atomicio import append_jsonl, atomic_write_text, file_lock
from orchestrator.record import index, record
from orchestrator.record.record import NOT_DIAGNOSED, IllegalTransition, attempt_n, current_attempt, current_job_id
from orchestrator.checks.diagnose import Diagnosis, diagnose_run, record_failure
from orchestrator.secrets import redact_mapping
from orchestrator.errors import OrchError, UserError
from orchestrator.record.record import now_iso
from orchestrator.record.tree import Damaged, ResultsRoot, Run
from orchestrator.record.states import State

if TYPE_CHECKING:
    from orchestrator.lifecycle.refresh import RunView

LOCK_NAME = ".monitor.lock"  # in the results root: one pass at a time
RUN_LOCK_NAME = ".monitor.lock"  # inside each run folder: one handler of a run at a time
EVENTS_NAME = "events.jsonl"
RETRY_WINDOW = 24 * 3600.0  # an attempt that ended longer ago than this is not retried automatically
_NOT_DIAGNOSED = tuple(c.value for c in NOT_DIAGNOSED)  # decided by orch itself: nothing in the logs


@dataclass
class PassResult:
    events: list[dict[str, Any]] = field(default_factory=list)
    active: int = 0
    skipped: bool = False  # another monitor held the lock
    damaged: list[Damaged] = field(default_factory=list)  # run folders that could not be read
    unavailable: Optional[str] = None  # a backend did not answer (why): `orch monitor` exits 3


# How long a pass waits for a stalled job it stopped to be gone before retrying it (else: next pass)
STOP_WAIT = 30.0


class Monitor:
    """One results root; `run_pass()` does one idempotent pass."""

    def __init__(self, root: Path | str, *, now: Callable[[], float] = time.time,
                 log: Callable[[str], None] = lambda s: None, report: Optional[Path] = None) -> None:
        self.root = ResultsRoot(root)
        self.report = report  # a static HTML report to rewrite after each pass (`orch report`)
        self.now = now
        self.log = log
        self._specs: dict[str, Any] = {}
        self._spec_problems: dict[str, str] = {}
        self._runs: list[Run] = []
        self.events: list[dict[str, Any]] = []
        self._events_unwritable = False
        self.unavailable: Optional[str] = None
        self._stopped: set[str] = set()  # runs whose stalled job this monitor stopped

    # -- bookkeeping ---------------------------------------------------------------------
    def emit(self, kind: str, run: Optional[Run] = None, **fields: Any) -> dict[str, Any]:
        ev: dict[str, Any] = {"time": now_iso(), "ts": round(self.now(), 3), "event": kind}
        if run is not None:
            ev.update(run_id=run.run_id, name=run.name, run_dir=str(run.paths.root))
        ev.update(redact_mapping({k: v for k, v in fields.items() if v is not None}))
        try:
            append_jsonl(self.root.root / EVENTS_NAME, ev)
        except OSError as exc:  # a full disk or a read-only tree: the event is still reported and alerted
            if not self._events_unwritable:
                self._events_unwritable = True
                self.log(f"warning: cannot append to {self.root.root / EVENTS_NAME}: {exc.strerror or exc}")
        self.events.append(ev)
        return ev

    def spec(self, run: Run) -> Any:
        """The run's resolved spec (cached), or None when spec.yaml cannot be read."""
        if run.run_id not in self._specs:
            from orchestrator.spec.schema import spec_from_run

            try:
                self._specs[run.run_id] = spec_from_run(run.paths.spec)
            except (OrchError, OSError, ValueError) as exc:
                why = (exc.message if isinstance(exc, OrchError) else
                       f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc))
                self._spec_problems[run.run_id] = f"spec.yaml unusable: {why}"
                self.log(f"{run.run_id}: spec.yaml unusable: {why}")
                self._specs[run.run_id] = None
        return self._specs[run.run_id]

    def monitor_spec(self, run_id: Optional[str]) -> Any:
        for run in self._runs:
            if run.run_id == run_id:
                spec = self.spec(run)
                return spec.monitor if spec is not None else None
        return None

    # -- the pass ------------------------------------------------------------------------
    def run_pass(self) -> PassResult:
        if not self.root.root.is_dir():
            raise UserError(f"results root {self.root.root} does not exist",
                            hint="pass --results DIR (or set ORCH_RESULTS)")
        with contextlib.ExitStack() as stack:
            try:
                got = stack.enter_context(file_lock(self.root.root / LOCK_NAME, blocking=False))
            except OSError as exc:
                raise UserError(f"cannot take the monitor lock in {self.root.root}: {exc.strerror or exc}",
                                hint="the monitor needs write access to the results root") from None
            if not got:
                return PassResult(skipped=True)
            self.events = []
            self.unavailable = None
            scan = index.scan(self.root)  # finished runs already handled are not read again
            self._runs, damaged = scan.runs, scan.damaged
            for d in damaged:
                self.log(f"warning: damaged run folder {d}")
            active = self.refresh_active([r for r in self._runs if r.indexed is None and r.state.active])
            for run in self._runs:
                if run.indexed is not None and _handled(run.indexed.marker, run.indexed.attempt, run.indexed.state):
                    continue  # unchanged since a pass handled its attempt (handle_ended's own pre-check)
                run.reload()
                if run.state.terminal:
                    self.guarded(run, self.handle_ended)
            scan.save()
            from orchestrator.monitor.alerts import dispatch_all

            for ev in dispatch_all(list(self.events), self.monitor_spec):
                self.emit(ev.pop("event"), None, **ev)
            self.refresh_report()
            return PassResult(self.events, active, damaged=damaged, unavailable=self.unavailable)

    def guarded(self, run: Run, handle: Callable[[Run], None]) -> None:
        """Handle one run; whatever breaks it (a damaged spec, a folder we may not write, a full disk,
        a bug) becomes one `monitor_error` event per distinct problem, and the pass goes on."""
        try:
            handle(run)
        except Exception as exc:  # noqa: BLE001 - one broken run must not stop the monitor for all others
            first = (str(exc).splitlines() or [""])[0]
            why = exc.message if isinstance(exc, OrchError) else f"{type(exc).__name__}: {first[:300]}"
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            own = frame is not None and not isinstance(exc, OrchError)
            where = f" (at {Path(frame.filename).name}:{frame.lineno})" if own and frame else ""
            summary = f"could not handle this run: {why}{where}"
            n = _attempt_n(run)
            marker = run.reload().get("monitor") or {}
            if marker.get("error") == summary and marker.get("error_attempt") == n:
                return  # reported already; it keeps failing the same way
            self.emit("monitor_error", run, attempt=n, summary=summary)
            try:
                self._mark(run, n, run.state, error=summary, error_attempt=n)
            except (OrchError, OSError):
                pass  # the record itself cannot take it: reported again next pass

    def refresh_report(self) -> None:
        """Rewrite the static report from this pass's states (no second backend poll); a report that
        cannot be written is logged, never a reason to fail the pass."""
        if self.report is None:
            return
        from orchestrator.report.site import build

        try:
            res = build(self.root.root, self.report, runs=[r for r in self._runs if r.reload()], poll=False)
            self.log(f"report: {res.runs} runs in {res.seconds:.1f} s -> {res.index}")
        except (OrchError, OSError) as exc:
            self.log(f"report not refreshed: {getattr(exc, 'message', exc)}")

    # -- active runs ---------------------------------------------------------------------
    def refresh_active(self, runs: list[Run]) -> int:
        """Poll, persist discovered states (STALLED, vanished), apply the stall policy; active count."""
        if not runs:
            return 0
        from orchestrator.lifecycle.refresh import refresh

        for view in refresh(runs, now=self.now()):
            self.guarded(view.run, lambda _run, view=view: self.refresh_one(view))
        for run in runs:
            run.reload()
        return sum(1 for r in runs if r.state.active)

    def refresh_one(self, view: "RunView") -> None:
        """Persist what refresh found out about one active run; apply the stall policy."""
        from orchestrator.lifecycle.refresh import persist

        run = view.run
        before = run.state
        if getattr(view, "stale", None):  # nothing is decided on a stale answer: no stall, no vanish, no retry
            self.unavailable = view.stale
            self.emit("backend_unavailable", run, summary=view.stale)
            return
        if view.reason and view.reason.startswith("backend unavailable"):
            self.emit("backend_unavailable", run, summary=view.reason)
            return
        with file_lock(run.paths.root / RUN_LOCK_NAME):
            if view.state != before and persist(view):
                run.reload()
                if view.state == State.STALLED:
                    self.emit("stalled", run, attempt=_attempt_n(run), summary=view.reason)
                elif before == State.STALLED and view.state == State.RUNNING:
                    self.emit("recovered", run, attempt=_attempt_n(run), summary="heartbeat is fresh again")
                elif view.died:
                    self.emit("vanished", run, attempt=_attempt_n(run), summary=view.reason)
            run.reload()
            if run.state == State.STALLED:
                self.apply_stall_policy(run)

    def apply_stall_policy(self, run: Run) -> None:
        """`retry.on` lists `stalled`: stop the job (SIGTERM, then SIGKILL) so it can be retried."""
        spec = self.spec(run)
        if spec is None or "stalled" not in spec.retry.on:
            return
        rec = run.record
        job_id, n = current_job_id(rec), _attempt_n(run)
        if not job_id:
            return
        from orchestrator.backends import get_backend

        reason = rec.get("state_reason") or "no heartbeat"
        try:  # tell the wrapper why it is being stopped: a stall is retried, a cancel never is
            run.paths.cancel_request.write_text(f"stalled: {reason}\n")
            get_backend(rec.get("backend") or spec.backend).cancel([job_id])
        except OrchError as exc:
            self.emit("backend_unavailable", run, summary=f"could not stop the stalled job: {exc.message}")
            return
        except OSError as exc:
            self.emit("stop_failed", run, summary=f"could not stop the stalled job: {exc}")
            return
        record.stop_stalled(run, n, reason)  # unless the wrapper recorded the outcome itself
        self._stopped.add(run.run_id)
        self.emit("killed_stalled", run, attempt=n, summary=f"stopped stalled job {job_id} ({reason})")

    # -- ended runs ----------------------------------------------------------------------
    def handle_ended(self, run: Run) -> None:
        """Diagnose / retry / check / preserve one ended attempt, exactly once."""
        n = _attempt_n(run)
        if _handled(run.record.get("monitor"), n, run.state):
            return  # cheap pre-check; repeated under the lock
        with file_lock(run.paths.root / RUN_LOCK_NAME):
            rec = run.reload()
            marker = rec.get("monitor") or {}
            state = run.state
            if not state.terminal or _handled(marker, n, state):
                return
            if state == State.COMPLETED:
                self.on_completed(run, n)
                self._mark(run, n, state, done=True)
                return
            diagnosis = self._diagnosis(run, marker, n)
            if not marker.get("notified_attempt") == n:
                self.emit("cancelled" if diagnosis.cls == "cancelled" else "failed", run, attempt=n,
                          **{"class": diagnosis.cls}, summary=diagnosis.summary, exception=diagnosis.exception,
                          evidence=diagnosis.evidence, state=str(state))
                self._mark(run, n, state, notified=True)
            done = self.apply_retry(run, n, diagnosis)
            if done:
                self._mark(run, n, state, done=True)

    def _diagnosis(self, run: Run, marker: dict[str, Any], n: int) -> Diagnosis:
        rec = run.record
        f = rec.get("failure") or {}
        if run.state == State.CANCELLED:  # orch cancel, scancel, a dependency: decided, never diagnosed
            cls = f.get("class") if f.get("class") in _NOT_DIAGNOSED else "cancelled"
            return Diagnosis(cls, f.get("summary") or rec.get("state_reason") or "cancelled", f.get("evidence") or [],
                             None, f.get("exit_code"), f.get("signal"), n)
        if (f.get("attempt") == n and f.get("evidence") is not None) or f.get("class") in _NOT_DIAGNOSED:
            return Diagnosis(f.get("class", "unknown"), f.get("summary", ""), f.get("evidence") or [],
                             f.get("exception"), f.get("exit_code"), f.get("signal"), n)
        att = current_attempt(rec) or {}
        backend_state = None
        if att.get("cause") == "node_fail" and att.get("exit_code") is None and att.get("signal") is None:
            backend_state = "VANISHED"
        d = diagnose_run(run, backend_state=backend_state)
        record_failure(run, d)
        return d

    def _mark(self, run: Run, n: int, state: State, *, done: bool = False, notified: bool = False,
              **extra: Any) -> None:
        def mutate(rec: dict[str, Any]) -> None:
            m = rec.setdefault("monitor", {})
            if done:
                m.update(done_attempt=n, done_state=str(state), done_at=now_iso())
                m.pop("retry_at", None)
            if notified:
                m["notified_attempt"] = n
            m.update(extra)
        run.annotate(mutate)

    def apply_retry(self, run: Run, n: int, d: Diagnosis) -> bool:
        """Resubmit per `retry:`; True when this attempt needs no further attention."""
        spec = self.spec(run)
        if d.cls == "cancelled" or run.state == State.CANCELLED:
            return True  # nothing retries a cancellation
        if spec is None:
            self.emit("not_retried", run, attempt=n, **{"class": d.cls},
                      summary=self._spec_problems.get(run.run_id, "spec.yaml unusable"))
            return True
        retry = spec.retry
        rec = run.record
        attempts = len(rec.get("attempts") or [])
        if d.cls not in retry.on:
            self.emit("not_retried", run, attempt=n, **{"class": d.cls},
                      summary=f"{d.cls} is not in retry.on ({', '.join(retry.on)})", exception=d.exception)
            return True
        if attempts >= retry.max_attempts:
            self.emit("gave_up", run, attempt=n, **{"class": d.cls},
                      summary=f"{attempts} of {retry.max_attempts} attempts used", exception=d.exception)
            return True
        held = self._still_held(run)
        deadline = time.monotonic() + STOP_WAIT
        while held and run.run_id in self._stopped and not self.unavailable and time.monotonic() < deadline:
            time.sleep(0.5)  # the job this pass stopped is still on its way out (SIGTERM, grace, SIGKILL)
            held = self._still_held(run)
        if held:  # one job per run: the scheduler's own requeue is the next attempt
            if (rec.get("monitor") or {}).get("held") != held:
                self._mark(run, n, run.state, held=held)
                self.emit("retry_held", run, attempt=n, **{"class": d.cls}, summary=held)
            return False
        from orchestrator.spec.schema import parse_duration

        delay = parse_duration(retry.backoff) * (2 ** max(0, attempts - 1))
        ended = _ended_ts(rec) or self.now()
        if self.now() - ended > RETRY_WINDOW + delay:
            self.emit("not_retried", run, attempt=n, **{"class": d.cls},
                      summary=f"ended over {RETRY_WINDOW / 3600:.0f} h ago; `orch resume {run.run_id}` to retry it")
            return True
        due = ended + delay
        if self.now() < due:
            m = rec.get("monitor") or {}
            if m.get("retry_at") != round(due, 3):
                self._mark(run, n, run.state, retry_at=round(due, 3))
                self.emit("retry_scheduled", run, attempt=n, **{"class": d.cls},
                          summary=f"retry in {due - self.now():.0f}s (back-off {delay:.0f}s)")
            return False
        if d.cls == "oom" and retry.oom_halve_batch and not self.halve_batch(run, n):
            return True
        from orchestrator.lifecycle.submit import resubmit

        try:
            job_id = resubmit(run, reason=f"retry after {d.cls} (attempt {n})", after_attempt=n)
        except IllegalTransition as exc:  # `orch resume` (or another monitor) got there first
            self.emit("retry_skipped", run, attempt=n, **{"class": d.cls}, summary=exc.message)
            return True
        except OrchError as exc:
            self.emit("retry_failed", run, attempt=n, **{"class": d.cls}, summary=exc.message)
            return True
        except OSError as exc:
            self.emit("retry_failed", run, attempt=n, **{"class": d.cls}, summary=str(exc))
            return True
        self.emit("retried", run, attempt=n, **{"class": d.cls}, job_id=job_id,
                  summary=f"resubmitted as attempt {n + 1} of {retry.max_attempts} (job {job_id}); "
                          f"resumes from its newest checkpoint")
        return True

    def _still_held(self, run: Run) -> Optional[str]:
        """Why not to resubmit a stopped run yet: its attempt record says a requeue is pending, or
        the scheduler still holds its job (PENDING for its own requeue, BeginTime, REQUEUED,
        REQUEUE_HOLD, or running again); None when nothing holds it. A scheduler that does not answer
        holds it too: a resubmission now could make a second job for the run."""
        rec = run.record
        att = current_attempt(rec) or {}
        if att.get("requeued"):
            return f"attempt {att.get('n')} was requeued: the requeued job is the next attempt"
        job_id = att.get("job_id")
        if not job_id:
            return None
        from orchestrator.backends import get_backend
        from orchestrator.backends.registry import DEFAULT

        try:
            js = get_backend(rec.get("backend") or DEFAULT).poll([job_id]).get(job_id)
        except OrchError as exc:
            self.unavailable = exc.message
            return f"the backend did not answer ({exc.message}): not resubmitting while job {job_id} may still be held"
        if js is not None and js.state is not None and js.state.active:
            return (f"job {job_id} is still held by the scheduler ({js.raw_state}"
                    + (f", {js.reason}" if js.reason else "") + "): its requeue is the next attempt")
        return None

    def halve_batch(self, run: Run, n: int) -> bool:
        """After an OOM: halve train.batch_size and double grad_accum (same global batch) in spec.yaml.

        The result is validated with the run's own schema (its trainer's, from the registry). True
        when the retry may go ahead; False, after a `retry_failed` event saying why, when the spec
        could not be changed (the pass goes on; the caller marks the attempt handled).
        """
        from orchestrator.spec.schema import spec_from_data, spec_to_yaml
        from orchestrator.spec.yamlpos import safe_load

        try:
            data = safe_load(run.paths.spec.read_text(encoding="utf-8")) or {}
            train = data.setdefault("train", {})
            bs, ga = int(train.get("batch_size", 12)), int(train.get("grad_accum", 1))
            if bs <= 1:
                self.emit("oom_halved", run, attempt=n, summary="batch_size is already 1: retrying unchanged")
                return True
            train["batch_size"], train["grad_accum"] = bs // 2, ga * 2
            spec = spec_from_data(data, str(run.paths.spec))  # still a valid spec for this trainer
            atomic_write_text(run.paths.spec, spec_to_yaml(spec))
        except Exception as exc:  # noqa: BLE001 - one run's bad spec must never end the pass for all runs
            text = exc.render() if isinstance(exc, OrchError) else f"{type(exc).__name__}: {exc}"
            self.emit("retry_failed", run, attempt=n, **{"class": "oom"},
                      summary=f"could not halve the batch for the retry: {text}")
            return False
        self._specs.pop(run.run_id, None)
        change = {"attempt": n, "reason": "oom", "batch_size": [bs, bs // 2], "grad_accum": [ga, ga * 2],
                  "at": now_iso()}
        run.annotate(lambda rec: rec.setdefault("adjustments", []).append(change))
        self.emit("oom_halved", run, attempt=n,
                  summary=f"batch_size {bs} -> {bs // 2}, grad_accum {ga} -> {ga * 2} (same global batch)")
        return True

    def on_completed(self, run: Run, n: int) -> None:
        from orchestrator.checks.judge import check_and_record

        verdict = check_and_record(run)
        if verdict.passed:
            self.emit("completed", run, attempt=n, summary="completed; all error-level checks pass")
        else:
            self.emit("checks_failed", run, attempt=n, failing=[r.name for r in verdict.failing],
                      summary="; ".join(f"{r.name}: {r.detail}" for r in verdict.failing))
        spec = self.spec(run)
        if spec is not None and spec.preserve.auto:
            self.preserve(run, spec, n)

    def preserve(self, run: Run, spec: Any, n: int) -> None:
        try:
            from orchestrator.preserve.bundle import preserve_run  # written by another module owner; optional
        except ImportError:
            self.emit("preserve_skipped", run, attempt=n, summary="orchestrator.preserve.bundle is not available")
            return
        dest = Path(spec.preserve.dest)
        if not dest.is_absolute():
            dest = self.root.root.resolve().parent / dest
        try:
            path = preserve_run(run, dest, spec.preserve.checkpoints)
        except OrchError as exc:
            self.emit("preserve_failed", run, attempt=n, summary=exc.message)
            return
        except OSError as exc:
            self.emit("preserve_failed", run, attempt=n, summary=str(exc))
            return
        self.emit("preserved", run, attempt=n, summary=f"preserved to {path}")


def _attempt_n(run: Run) -> int:
    return attempt_n(run.record)


def _handled(marker: Any, n: int, state: State) -> bool:
    """The monitor's marker in run.json says attempt n ended in `state` was handled already."""
    return isinstance(marker, dict) and marker.get("done_attempt") == n and marker.get("done_state") == str(state)


def _ended_ts(rec: dict[str, Any]) -> Optional[float]:
    from datetime import datetime

    att = current_attempt(rec) or {}
    for value in (att.get("ended_at"), rec.get("ended_at"), rec.get("updated_at")):
        if value:
            try:
                return datetime.fromisoformat(value).timestamp()
            except (TypeError, ValueError):
                continue
    return None


def monitor_once(root: Path | str, *, log: Callable[[str], None] = lambda s: None) -> PassResult:
    return Monitor(root, log=log).run_pass()
