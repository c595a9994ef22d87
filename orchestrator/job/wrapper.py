"""The job wrapper: what every backend runs inside the job, `python -m orchestrator.job RUN_DIR`.

It needs nothing but the run folder and its backend's job side (`backends/*/job.py`: job id,
time limit, requeue). It claims (or, after a requeue, opens) an attempt in run.json (refusing to
run when the record names another job), waits for `after:` dependencies and a local parallelism slot, starts the trainer with
its output in logs/stdout-N.log and logs/stderr-N.log, forwards signals to it, enforces the
time limit on the local backend the way `sbatch --signal` + the time limit do on SLURM, and
records how the attempt ended (exit.json, renamed into place, and run.json). A trainer exiting
with 75 has checkpointed after a signal: the wrapper requeues it while the retry policy allows.

A full disk (or an I/O error) must not make a job vanish without a word: the wrapper keeps a small
reserve file in the run folder and, when a record write fails with ENOSPC/EDQUOT/EIO, frees it and
retries with back-off (exit.json, a convenience copy, is simply skipped). An attempt that died on
a full disk or an I/O error (the wrapper's own writes failed, or the filesystem is full) is
recorded as `disk_full`/`io_error` with the path, even when the trainer could not write a line.

A SIGTERM with no warning signal before it is a cancellation unless the scheduler says otherwise
(the job side's `stop_verdict`: a node failure it requeued itself, a preemption).
"""
from __future__ import annotations

import argparse
import errno
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from orchestrator.backends.base import JobEnvironment
from orchestrator.backends.registry import job_environment, names as backend_names
from orchestrator.job.proctree import signal_tree
from orchestrator.lifecycle.provenance import safe_env
from orchestrator.record import record
from orchestrator.record.atomicio import atomic_write_json, file_lock, read_json
from orchestrator.record.heartbeat import Heartbeat
from orchestrator.record.paths import RunPaths
from orchestrator.record.record import Failure, IllegalTransition, now_iso
from orchestrator.record.states import EXIT_REQUEUE, State
from orchestrator.record.tree import Run
from orchestrator.spec.schema import Spec, parse_duration, spec_from_run

FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
TERMINATING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
KILL_WAIT = float(os.environ.get("ORCH_KILL_WAIT", "10"))
POLL = 0.2
T = TypeVar("T")
# errno -> failure class: a write (or read) the filesystem refused, whoever made it
DISK_ERRNOS = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EIO: "io_error"}
RESERVE_NAME = ".orch-reserve"  # freed when the disk is full, so the attempt's end can be recorded
RESERVE_BYTES = 256 * 1024
FULL_BELOW = 64 * 1024  # a filesystem with less free space than this is full
RECORD_TRIES = 6  # record writes on a full disk: 0.2 + 0.4 + ... + 3.2 s of back-off in all


def trainer_command(spec: Spec, run_dir: Path, port_seed: str) -> list[str]:
    """`python -m trainers RUN_DIR`, or `accelerate launch` when several processes are asked for."""
    procs = spec.resources.processes_per_node
    if procs <= 1:
        return [sys.executable, "-m", "trainers", str(run_dir)]
    port = 20000 + zlib.crc32(port_seed.encode()) % 20000
    # `--multi_gpu` selects accelerate's torchrun launcher, which also runs N CPU processes (gloo);
    # `--cpu` would pick its simple launcher and silently start ONE process (accelerate 1.x).
    # Precision is the trainer's (train.precision), so the launcher is told "no".
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(procs),
           "--num_machines", "1", "--main_process_port", str(port), "--dynamo_backend", "no",
           "--mixed_precision", "no", "--multi_gpu"]
    return cmd + ["-m", "trainers", str(run_dir)]


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the job wrapper dies (killed, or its node lost), so a trainer
    in its own process group is never left running unsupervised."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class JobWrapper:
    def __init__(self, run_dir: Path, backend: str, command: Optional[list[str]] = None,
                 job: Optional[JobEnvironment] = None) -> None:
        self.paths = RunPaths(run_dir.resolve())
        self.run = Run(self.paths)
        self.backend = backend
        self.job = job or job_environment(backend)
        self.spec = spec_from_run(self.paths.spec)
        self.command = command
        self.child: Optional[subprocess.Popen[bytes]] = None
        self.signals_seen: list[int] = []
        self.time_warned = False
        self.time_killed = False
        self.attempt = 0  # the attempt this wrapper claimed
        self.heartbeat = Heartbeat(self.paths.heartbeat)
        self._slot_fd: Optional[int] = None
        self.attempt_n: Optional[int] = None  # the attempt this wrapper claimed
        self.io_errors: list[tuple[OSError, str]] = []  # this wrapper's own writes the filesystem refused

    # -- attempts ------------------------------------------------------------------------
    def claim_attempt(self) -> int:
        """Start the attempt the record names (or a new one after a scheduler requeue); refused, with
        the reason, when this job is not the run's current job or the run was stopped meanwhile."""
        job_id, restarts = self.job.job_id(), self.job.restart_count()

        def claim() -> int:
            n = self.durable("claim the attempt in", lambda: record.claim(
                self.run, job_id=job_id, backend=self.backend, pid=os.getpid(), restart_count=restarts))
            self.attempt = self.attempt_n = n
            # a marker in the scheduler's log (this process's stderr on SLURM): diagnosis reads what follows it
            print(f"orch: attempt {n} started (job {job_id or '-'}, restart {restarts}) on {socket.gethostname()}",
                  file=sys.stderr, flush=True)
            return n

        try:
            return claim()
        except IllegalTransition:
            if not self._adopt_restart(job_id, restarts):
                raise
            return claim()

    def _adopt_restart(self, job_id: Optional[str], restarts: int) -> bool:
        """The scheduler restarted this same job (its own requeue: a node failure, an admin's
        `scontrol requeue`) before the record caught up. A previous start the record still calls
        running ended without a word (its wrapper died with its node): it is recorded as ended and
        requeued (node_fail). A run recorded as stopped (not cancelled) gets a new attempt for this
        start. Either way the claim that follows is the one decision; False when neither applies."""
        rec = self.run.reload()
        att = record.current_attempt(rec) or {}
        if not job_id or att.get("job_id") != job_id or int(att.get("restart_count") or 0) >= restarts:
            return False
        n, state = int(att.get("n") or 0), rec.get("state")
        try:
            if state in (str(State.RUNNING), str(State.STALLED)) and not att.get("ended_at"):
                record.finish(self.run, n, State.FAILED, cause="node_fail", requeue=True)
                what = "ended without a word (its node failed)"
            elif state in {str(s) for s in record.STOPPED} - {str(State.CANCELLED)}:
                record.resubmit(self.run, self.backend, after_attempt=n,
                                reason=f"requeued by the scheduler (restart {restarts})")
                what = f"was recorded {state}"
            else:
                return False
        except IllegalTransition:
            return True  # someone else moved the run meanwhile: the claim that follows decides
        print(f"orch: attempt {n} {what}; the scheduler restarted job {job_id} (restart {restarts})",
              file=sys.stderr, flush=True)
        return True

    def finish_attempt(self, n: int, state: State, exit_code: Optional[int], sig: Optional[int],
                       cause: Optional[str], requeue: bool) -> State:
        """Record how attempt n ended. On a full disk the record is still written (the reserve is
        freed for it) and a failure without another cause is `disk_full`/`io_error`."""
        failure = self.disk_failure(n) if state == State.FAILED and cause is None else None
        status = {"attempt": n, "state": str(state), "exit_code": exit_code, "signal": sig,
                  "cause": failure.cls if failure else cause, "requeued": requeue, "ended_at": now_iso(),
                  "host": socket.gethostname()}
        try:
            atomic_write_json(self.paths.exit_status, status)
        except OSError as exc:  # a convenience copy: run.json, below, is the record
            self._note_io_error(exc, "write", self.paths.exit_status)
            if state == State.FAILED and cause is None:
                failure = self.disk_failure(n)  # now with this error as evidence
        cause = failure.cls if failure else cause
        return self.durable("record the end of the attempt in", lambda: record.finish(
            self.run, n, state, exit_code=exit_code, signal=sig, cause=cause, failure=failure, requeue=requeue))

    # -- a full disk ---------------------------------------------------------------------
    def make_reserve(self) -> None:
        """A small file of really allocated blocks, freed when a record write hits a full disk."""
        path = self.paths.root / RESERVE_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:  # already full (or no fallocate): no reserve, the retries still run
            self.release_reserve()

    def release_reserve(self) -> bool:
        try:
            (self.paths.root / RESERVE_NAME).unlink()
            return True
        except OSError:
            return False

    def durable(self, what: str, write: Callable[[], T]) -> T:
        """A record write that a full disk or an I/O error does not lose: on ENOSPC/EDQUOT/EIO the
        reserve is freed and the write retried with back-off; other errors are raised at once."""
        delay = 0.2
        for attempt in range(RECORD_TRIES):
            try:
                return write()
            except OSError as exc:
                if exc.errno not in DISK_ERRNOS or attempt == RECORD_TRIES - 1:
                    raise
                self._note_io_error(exc, what, self.paths.run_json)
                freed = self.release_reserve()
                if not freed:
                    time.sleep(delay)
                    delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _note_io_error(self, exc: OSError, what: str, path: Path) -> None:
        self.io_errors.append((exc, str(exc.filename or path)))
        say(f"orch: could not {what} {path}: {exc.strerror or exc}")

    def disk_failure(self, n: int) -> Optional[Failure]:
        """disk_full/io_error for attempt n when this wrapper's writes failed that way, the trainer's
        log shows it, or the run's filesystem is full now (the trainer could not even log why)."""
        from orchestrator.checks.diagnose import disk_trouble, last_exception, read_tail

        ours = [f"OSError: [Errno {e.errno}] {e.strerror}: '{path}'" for e, path in self.io_errors
                if e.errno in DISK_ERRNOS]
        log = read_tail(self.paths.stderr(n), 16 * 1024, 60)
        found = disk_trouble(ours + log)
        try:
            st = os.statvfs(self.paths.root)
            free: Optional[int] = st.f_bavail * st.f_frsize
        except OSError:
            free = None
        if found is None and last_exception(log)[0] is None and free is not None and free < FULL_BELOW:
            found = ("disk_full", f"no space left on the filesystem of {self.paths.root}",
                     ["the trainer ended without a word (its log could not be written)"])
        if found is None:
            return None  # the trainer's own traceback says why: diagnosed from the logs
        cls, summary, evidence = found
        if free is not None:
            evidence = evidence + [f"the filesystem of {self.paths.root} has {free:,} bytes free now"]
        return Failure(cls, summary, attempt=n, evidence=evidence, diagnosed_at=now_iso())

    def record_crash(self, exc: BaseException) -> None:
        """The wrapper itself broke: a full disk or an I/O error ends the claimed attempt as such;
        anything else is a wrapper_error. Retried like every record write."""
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS and self.attempt_n is not None:
            self.io_errors.append((exc, str(exc.filename or self.paths.root)))
            n, failure = self.attempt_n, self.disk_failure(self.attempt_n)
            try:
                self.durable("record the end of the attempt in", lambda: record.finish(
                    self.run, n, State.FAILED, cause=failure.cls if failure else None, failure=failure))
            except IllegalTransition:
                pass  # the attempt's end was recorded before the wrapper broke
            return
        summary = f"{type(exc).__name__}: {exc}"
        self.durable("record the wrapper's error in", lambda: record.wrapper_error(self.run, summary))

    # -- waiting -------------------------------------------------------------------------
    def wait_for_dependencies(self) -> Optional[str]:
        """Local `after:`: wait until every dependency COMPLETED; a reason string if one never will."""
        deps = self.run.record.get("after") or []
        while deps:
            waiting = []
            for dep in deps:
                rec = read_json(Path(dep["run_dir"]) / "run.json", default={}) or {}
                state = rec.get("state")
                if state == str(State.COMPLETED):
                    continue
                if state in {str(s) for s in record.STOPPED}:
                    return f"dependency {Path(dep['run_dir']).name} ended {state}"
                waiting.append(dep)
            if not waiting:
                return None
            self._set_pending("Dependency")
            time.sleep(1.0)
            deps = waiting
        return None

    def acquire_slot(self) -> None:
        """Hold one of N lock files for the sweep group: a parallelism limit that needs no daemon."""
        group, limit = os.environ.get("ORCH_SLOT_GROUP"), int(os.environ.get("ORCH_SLOT_LIMIT", "0") or 0)
        if not group or limit <= 0:
            return
        import fcntl

        root = Path(os.environ.get("ORCH_RESULTS_ROOT", self.paths.root.parent.parent)) / ".slots" / group
        root.mkdir(parents=True, exist_ok=True)
        announced = False
        while True:
            for i in range(limit):
                fd = os.open(root / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._slot_fd = fd  # released by the kernel when this process ends
                    return
                except BlockingIOError:
                    os.close(fd)
            if not announced:
                self._set_pending("Resources")
                announced = True
            time.sleep(0.5)

    def _set_pending(self, reason: str) -> None:
        if self.run.record.get("pending_reason") != reason:
            record.waiting(self.run, reason)

    # -- running -------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals_seen.append(signum)
        self._signal_child(signum)

    def _signal_child(self, sig: int) -> None:
        """Signal the trainer's process group and every process below it: with `accelerate launch`,
        the workers themselves, which torchrun starts in sessions of their own and does not pass
        USR1 on to."""
        if self.child is not None and self.child.poll() is None:
            signal_tree(self.child.pid, sig)

    def _child_setup(self) -> None:
        """In the child, before exec: its own process group, and the warning signal ignored.

        An ignored signal stays ignored across exec, so a warning that arrives while Python is
        still importing torch cannot kill the trainer; its handler replaces SIG_IGN once installed.
        """
        os.setpgid(0, 0)
        _die_with_parent()
        if self.warn_signal not in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(self.warn_signal, signal.SIG_IGN)

    @property
    def warn_signal(self) -> int:
        return int(getattr(signal, "SIG" + self.spec.resources.signal))

    def run_attempt(self, n: int) -> int:
        env = dict(os.environ)
        env.update(ORCH_RUN_DIR=str(self.paths.root), ORCH_ATTEMPT=str(n), PYTHONUNBUFFERED="1",
                   ORCH_BACKEND=self.backend)
        env.setdefault("ORCH_RESULTS_ROOT", str(self.paths.root.parent.parent))
        cmd = self.command or trainer_command(self.spec, self.paths.root, f"{self.paths.run_id}-{n}")
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        try:  # what the trainer runs with (HF_HOME, offline mode, ...), as provenance records the submitting side's
            atomic_write_json(self.paths.environment(n), {"attempt": n, "hostname": socket.gethostname(),
                                                          "env": safe_env(env)})
        except OSError:
            pass  # a record for people, not state: a full disk is diagnosed by the attempt itself
        with open(self.paths.stdout(n), "ab") as out, open(self.paths.stderr(n), "ab") as err:
            out.write(f"# orch attempt {n} on {socket.gethostname()} at {now_iso()}: {shlex.join(cmd)}\n".encode())
            out.flush()
            self.child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                          preexec_fn=self._child_setup)
        start = time.monotonic()
        limit = None if self.job.enforces_time_limit else self.spec.resources.time_seconds
        grace = min(self.spec.resources.signal_grace, (limit or 0) / 2) if limit else 0
        warn_sig = self.warn_signal
        while True:
            try:
                return self.child.wait(timeout=POLL)
            except subprocess.TimeoutExpired:
                pass
            if limit is None:
                continue
            elapsed = time.monotonic() - start
            if not self.time_warned and elapsed >= limit - grace:
                self.time_warned = True
                self._signal_child(warn_sig)
            if not self.time_killed and elapsed >= limit:
                self.time_killed = True
                self._signal_child(signal.SIGTERM)
            if self.time_killed and elapsed >= limit + KILL_WAIT:
                self._signal_child(signal.SIGKILL)

    def stop_request(self) -> Optional[str]:
        """Why orch asked this job to stop (`orch cancel`, or the monitor stopping a stalled job)."""
        try:
            return self.paths.cancel_request.read_text(encoding="utf-8", errors="replace").strip() or "cancelled"
        except FileNotFoundError:
            return None
        except OSError:
            return "cancelled"

    def outcome(self, rc: int) -> tuple[State, Optional[str], bool]:
        """(state, cause, requeue?) for an attempt that ended with return code `rc`.

        The warning signal (`resources.signal`, sent `signal_grace` seconds before the time limit by
        Slurm's `--signal` or by this wrapper locally) marks a time limit or a preemption: the trainer
        checkpoints, exits 75, and the job is requeued while `retry:` allows. A SIGTERM *without* a
        warning before it is a cancellation (`scancel`, `kill`): never requeued, never retried,
        whatever the trainer did with it (a checkpoint is still welcome for a later `orch resume`).
        """
        request = self.stop_request()
        if request is not None:
            if request.startswith("stalled"):
                return State.FAILED, "stalled", False
            return State.CANCELLED, "cancelled", False
        if rc == 0:
            return State.COMPLETED, None, False
        warned = self.time_warned or self.warn_signal in self.signals_seen
        if not warned and any(s in TERMINATING for s in self.signals_seen):
            return self._unwarned_stop()
        killed_by_warning = rc < 0 and -rc == self.warn_signal and warned
        # A launcher (torchrun) reports its workers' exit 75 as a plain failure: the trainer's own
        # record of this attempt says whether it stopped for the signal after a checkpoint.
        preempted = warned and str(self.run.reload().get("stop_reason", "")).startswith("preempted")
        if rc == EXIT_REQUEUE or self.time_killed or killed_by_warning or (rc != 0 and preempted):
            cause = "timeout" if (self.time_warned or self._near_time_limit()) else "preempted"
            state = State.TIMEOUT if cause == "timeout" else State.PREEMPTED
            return state, cause, self._retry_allows(cause)
        if rc < 0:
            return State.FAILED, "killed", self._retry_allows("killed")
        return State.FAILED, None, False  # classified from the logs by diagnose() below

    def _unwarned_stop(self) -> tuple[State, Optional[str], bool]:
        """A SIGTERM with no warning signal before it. The job side asks the scheduler why: a
        cancellation (`scancel`, or a signal by hand: never requeued, never retried), or the
        scheduler's own stop (a node it marked DOWN, a preemption), which it may have requeued
        already; then this attempt just ends and the requeued job is the next one (or is dropped
        when the retry policy allows no further attempt)."""
        from orchestrator.checks.diagnose import attempt_lines, read_tail

        verdict = self.job.stop_verdict(attempt_lines(read_tail(self.paths.scheduler_log, 16 * 1024, 60), self.attempt))
        print(f"orch: SIGTERM without a warning: {verdict.cause if verdict else 'cancelled'}"
              + (" (the scheduler requeued the job)" if verdict and verdict.requeued else "")
              + (f" [{verdict.evidence}]" if verdict else ""), file=sys.stderr, flush=True)
        if verdict is None or verdict.cause == "cancelled":
            return State.CANCELLED, "cancelled", False
        state = {"timeout": State.TIMEOUT, "preempted": State.PREEMPTED}.get(verdict.cause, State.FAILED)
        allowed = self._retry_allows(verdict.cause)
        if verdict.requeued and not allowed:
            self.job.drop_requeue()
        return state, verdict.cause, allowed

    def _near_time_limit(self) -> bool:
        """A warning signal that arrives within the grace window of the scheduler's time limit."""
        started = self.job.started_at() if self.job.enforces_time_limit else None
        if not started:
            return False
        res = self.spec.resources
        return time.time() - started >= res.time_seconds - res.signal_grace - 30

    def _retry_allows(self, cause: str) -> bool:
        retry = self.spec.retry
        attempts = len(self.run.reload().get("attempts", []))
        return cause in retry.on and attempts < retry.max_attempts

    def diagnose(self) -> None:
        """Classify the failure while its logs are fresh, so `orch status` can say why at once."""
        try:
            from orchestrator.checks.diagnose import ensure_diagnosed

            ensure_diagnosed(self.run)
        except Exception as exc:  # a diagnosis must never turn an ended job into a crashed wrapper
            print(f"orch: could not diagnose the failure: {exc}", file=sys.stderr)

    def main(self) -> int:
        for sig in FORWARDED:
            signal.signal(sig, self._on_signal)
        self.make_reserve()
        blocked = self.wait_for_dependencies()
        if blocked:
            record.dependency_failed(self.run, blocked)
            return 1
        self.acquire_slot()
        while True:
            if self.stop_request() is not None:
                try:
                    record.cancel(self.run, "cancelled before it started")
                except IllegalTransition:
                    pass  # cancelled already
                return 1
            self.io_errors.clear()  # the evidence of a full disk is per attempt
            try:
                n = self.claim_attempt()
            except IllegalTransition as exc:
                print(f"orch: not starting: {exc.message}", file=sys.stderr)
                return 1
            self.heartbeat.beat(force=True, phase="starting", attempt=n)
            self.time_warned = self.time_killed = False
            self.signals_seen.clear()
            rc = self.run_attempt(n)
            state, cause, requeue = self.outcome(rc)
            sig = -rc if rc < 0 else None
            if requeue:
                requeue = self.job.requeue()
            kept = self.finish_attempt(n, state, rc if rc >= 0 else None, sig, cause, requeue)
            if not requeue and kept not in (State.COMPLETED, State.CANCELLED):
                self.diagnose()
            if not requeue:
                return 0 if kept == State.COMPLETED else (rc if rc > 0 else 1)
            if self.job.restarts_itself:
                return 0  # the scheduler starts the next attempt
            time.sleep(min(parse_duration(self.spec.retry.backoff), 2.0))


def say(text: str) -> None:
    """A line on the wrapper's stderr, if that can still be written (it may be on the full disk)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: Optional[list[str]] = None
    if "--" in argv:  # `... RUN_DIR --backend slurm -- srun ...`: run that instead of the trainer
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:] or None
    parser = argparse.ArgumentParser(prog="python -m orchestrator.job")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--backend", default="local", choices=backend_names())
    args = parser.parse_args(argv)
    with file_lock(RunPaths(args.run_dir).root / ".job.lock", blocking=False) as got:
        if not got:
            print("another job wrapper is already running this run", file=sys.stderr)
            return 1
        wrapper = JobWrapper(args.run_dir, args.backend, command)
        try:
            return wrapper.main()
        except Exception as exc:  # the wrapper itself broke: say so in the run folder, not only in a log
            import traceback

            say("".join(traceback.format_exception(exc)).rstrip())
            try:
                wrapper.record_crash(exc)
            except Exception as again:  # noqa: BLE001 - nothing left to record it with: say so, loudly
                say(f"orch: the end of this job could not be recorded in {wrapper.paths.run_json}: {again}")
                return 3
            return 1
        finally:
            wrapper.release_reserve()


if __name__ == "__main__":
    sys.exit(main())
