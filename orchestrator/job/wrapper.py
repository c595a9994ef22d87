"""The job wrapper: what every backend runs inside the job, `python -m orchestrator.job RUN_DIR`.

It needs nothing but the run folder. It claims (or, after a requeue, opens) an attempt in
run.json, waits for `after:` dependencies and a local parallelism slot, starts the trainer with
its output in logs/stdout-N.log and logs/stderr-N.log, forwards signals to it, enforces the
time limit on the local backend the way `sbatch --signal` + the time limit do on SLURM, and
records how the attempt ended (exit.json, renamed into place, and run.json). A trainer exiting
with 75 has checkpointed after a signal: the wrapper requeues it while the retry policy allows.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Optional

from orchestrator.record.atomicio import atomic_write_json, file_lock, read_json
from orchestrator.record.heartbeat import Heartbeat
from orchestrator.record.paths import RunPaths
from orchestrator.record.tree import Run, now_iso
from orchestrator.spec.schema import Spec, parse_duration, spec_from_run
from orchestrator.record.states import EXIT_REQUEUE, State

FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
KILL_WAIT = float(os.environ.get("ORCH_KILL_WAIT", "10"))
POLL = 0.2


def slurm_job_id() -> Optional[str]:
    """This job's id as orch records it: `<array job>_<task>` inside an array, else the job id."""
    from orchestrator.backends.slurm.submit import current_job_id

    return current_job_id()


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
    def __init__(self, run_dir: Path, backend: str, command: Optional[list[str]] = None) -> None:
        self.paths = RunPaths(run_dir.resolve())
        self.run = Run(self.paths)
        self.backend = backend
        self.spec = spec_from_run(self.paths.spec)
        self.command = command
        self.child: Optional[subprocess.Popen[bytes]] = None
        self.signals_seen: list[int] = []
        self.time_warned = False
        self.time_killed = False
        self.heartbeat = Heartbeat(self.paths.heartbeat)
        self._slot_fd: Optional[int] = None

    # -- attempts ------------------------------------------------------------------------
    def claim_attempt(self) -> int:
        """Stamp the pending attempt as started, or open a new one (a requeued SLURM job)."""
        job_id = slurm_job_id() if self.backend == "slurm" else None
        holder: dict[str, int] = {}

        def mutate(rec: dict[str, Any]) -> None:
            attempts = rec.setdefault("attempts", [])
            last = attempts[-1] if attempts else None
            if last is None or last.get("started_at"):
                last = {"n": len(attempts) + 1, "backend": self.backend, "job_id": job_id or (last or {}).get("job_id"),
                        "reason": "requeue" if attempts else "submit"}
                attempts.append(last)
            last.update(started_at=now_iso(), host=socket.gethostname(), pid=os.getpid(),
                        restart_count=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))
            if job_id and not last.get("job_id"):
                last["job_id"] = job_id
            rec["state"] = str(State.RUNNING)
            rec.pop("pending_reason", None)
            rec.pop("stop_reason", None)  # the trainer records this attempt's own
            holder["n"] = last["n"]

        self.run.update(mutate)
        return holder["n"]

    def finish_attempt(self, n: int, state: State, exit_code: Optional[int], sig: Optional[int],
                       cause: Optional[str], requeue: bool) -> None:
        ended = now_iso()
        status = {"attempt": n, "state": str(state), "exit_code": exit_code, "signal": sig,
                  "cause": cause, "requeued": requeue, "ended_at": ended, "host": socket.gethostname()}
        atomic_write_json(self.paths.exit_status, status)

        def mutate(rec: dict[str, Any]) -> None:
            for att in rec.get("attempts", []):
                if att.get("n") == n:
                    att.update(ended_at=ended, exit_code=exit_code, signal=sig, state=str(state), cause=cause)
            rec["exit_code"] = exit_code
            rec["ended_at"] = ended
            if requeue:
                rec["state"] = str(State.QUEUED)
                rec["pending_reason"] = f"requeued after {cause}"
            else:
                rec["state"] = str(state)
                if cause and state not in (State.COMPLETED,):
                    rec.setdefault("failure", {"class": cause, "summary": f"attempt {n}: {cause}"})

        self.run.update(mutate)

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
                if state in {str(s) for s in (State.FAILED, State.CANCELLED, State.TIMEOUT, State.PREEMPTED)}:
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
                fd = os.open(root / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
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
            self.run.set_state(State.QUEUED, pending_reason=reason)

    # -- running -------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals_seen.append(signum)
        self._signal_child(signum)

    def _signal_child(self, sig: int) -> None:
        """Signal the trainer's whole process group: with `accelerate launch`, the workers themselves
        (torchrun does not pass USR1 on to them)."""
        if self.child is not None and self.child.poll() is None:
            try:
                os.killpg(self.child.pid, sig)
            except ProcessLookupError:
                pass

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
        with open(self.paths.stdout(n), "ab") as out, open(self.paths.stderr(n), "ab") as err:
            out.write(f"# orch attempt {n} on {socket.gethostname()} at {now_iso()}: {shlex.join(cmd)}\n".encode())
            out.flush()
            self.child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                          preexec_fn=self._child_setup)
        start = time.monotonic()
        limit = self.spec.resources.time_seconds if self.backend == "local" else None
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

    def outcome(self, rc: int) -> tuple[State, Optional[str], bool]:
        """(state, cause, requeue?) for an attempt that ended with return code `rc`."""
        if self.paths.cancel_request.exists():
            return State.CANCELLED, "cancelled", False
        if rc == 0:
            return State.COMPLETED, None, False
        signalled = self.time_warned or bool(self.signals_seen)
        killed_by_warning = rc < 0 and -rc == self.warn_signal and signalled
        # A launcher (torchrun) reports its workers' exit 75 as a plain failure: the trainer's own
        # record of this attempt says whether it stopped for the signal after a checkpoint.
        preempted = signalled and str(self.run.reload().get("stop_reason", "")).startswith("preempted")
        if rc == EXIT_REQUEUE or self.time_killed or killed_by_warning or (rc != 0 and preempted):
            cause = "timeout" if (self.time_warned or self._near_slurm_limit()) else "preempted"
            state = State.TIMEOUT if cause == "timeout" else State.PREEMPTED
            return state, cause, self._retry_allows(cause)
        if rc < 0:
            return State.FAILED, "killed", self._retry_allows("killed")
        return State.FAILED, None, False  # classified later from the logs (orch monitor / status)

    def _near_slurm_limit(self) -> bool:
        """On SLURM, a signal that arrives within the grace window of the time limit is the warning."""
        if self.backend != "slurm":
            return False
        started = float(os.environ.get("ORCH_JOB_START", "0") or 0)
        if not started:
            return False
        return time.time() - started >= self.spec.resources.time_seconds - self.spec.resources.signal_grace - 30

    def _retry_allows(self, cause: str) -> bool:
        retry = self.spec.retry
        attempts = len(self.run.reload().get("attempts", []))
        return cause in retry.on and attempts < retry.max_attempts

    def requeue(self) -> bool:
        """Ask the backend to run this job again; on SLURM the same job id comes back later."""
        if self.backend == "slurm":
            from orchestrator.backends.slurm.submit import requeue_current_job

            return requeue_current_job()
        return True  # local: the loop in main() starts the next attempt itself

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
        os.environ.setdefault("ORCH_JOB_START", str(time.time()))
        blocked = self.wait_for_dependencies()
        if blocked:
            self.run.set_state(State.CANCELLED, pending_reason=None,
                               failure={"class": "dependency", "summary": blocked})
            return 1
        self.acquire_slot()
        while True:
            if self.paths.cancel_request.exists():
                self.run.set_state(State.CANCELLED)
                return 1
            n = self.claim_attempt()
            self.heartbeat.beat(force=True, phase="starting", attempt=n)
            self.time_warned = self.time_killed = False
            self.signals_seen.clear()
            rc = self.run_attempt(n)
            state, cause, requeue = self.outcome(rc)
            sig = -rc if rc < 0 else None
            if requeue:
                requeue = self.requeue()
            self.finish_attempt(n, state, rc if rc >= 0 else None, sig, cause, requeue)
            if not requeue and state not in (State.COMPLETED, State.CANCELLED):
                self.diagnose()
            if not requeue:
                return 0 if state == State.COMPLETED else (rc if rc > 0 else 1)
            if self.backend != "local":
                return 0  # the scheduler starts the next attempt
            time.sleep(min(parse_duration(self.spec.retry.backoff), 2.0))


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: Optional[list[str]] = None
    if "--" in argv:  # `... RUN_DIR --backend slurm -- srun ...`: run that instead of the trainer
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:] or None
    parser = argparse.ArgumentParser(prog="python -m orchestrator.job")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--backend", default="local", choices=["local", "slurm"])
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

            traceback.print_exc()
            wrapper.run.set_state(State.FAILED, failure={"class": "wrapper_error", "summary": f"{type(exc).__name__}: {exc}"})
            return 1


if __name__ == "__main__":
    sys.exit(main())
