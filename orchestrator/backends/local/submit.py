"""The local backend: jobs run detached on this machine with SLURM's semantics.

Each job is the rendered `job.sh` started in its own session (it survives the CLI exiting)
and `exec`s the job wrapper, which enforces the time limit with a warning signal, waits for a
parallelism slot, records state and exit status in the run folder, and requeues per policy.
A job id is `<pid>@<start time in clock ticks>`, so a reused pid is never mistaken for the job.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Optional, Sequence

from orchestrator.record.atomicio import atomic_write_text
from orchestrator.record import record
from orchestrator.record.record import attempt_n
from orchestrator.record.states import State
from orchestrator.backends.base import Backend, JobStatus, SubmitGroup, SubmitItem

if TYPE_CHECKING:  # the profile module imports pydantic: loaded when a job is rendered, not by `orch status`
    from orchestrator.spec.profile import ClusterProfile

KILL_WAIT = float(os.environ.get("ORCH_KILL_WAIT", "10"))  # SIGTERM -> SIGKILL grace (Slurm's KillWait)


def _stat_fields(pid: int | str) -> Optional[list[str]]:
    """The fields of /proc/<pid>/stat after "(comm)": [state, ppid, pgrp, session, ...], or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()


def proc_start_ticks(pid: int) -> Optional[tuple[int, str]]:
    """(start time in clock ticks since boot, state letter) of a live pid, or None."""
    fields = _stat_fields(pid)
    return (int(fields[19]), fields[0]) if fields else None


def make_job_id(pid: int) -> str:
    info = proc_start_ticks(pid)
    return f"{pid}@{info[0] if info else 0}"


def parse_job_id(job_id: str) -> tuple[int, int]:
    pid, _, start = job_id.partition("@")
    return int(pid), int(start or 0)


def job_alive(job_id: str) -> bool:
    try:
        pid, start = parse_job_id(job_id)
    except ValueError:
        return False
    info = proc_start_ticks(pid)
    if info is None or info[1] in ("Z", "X"):
        _reap(pid)
        return False
    return start == 0 or info[0] == start


def _reap(pid: int) -> None:
    """Collect a finished child of ours (when this process started it and is still around)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def render_env_exports(env: dict[str, str]) -> list[str]:
    return [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]


def _umask_line(profile: "ClusterProfile") -> list[str]:
    from orchestrator.spec.profile import umask_line

    return umask_line(profile)


class LocalBackend(Backend):
    name = "local"
    _profile: Optional["ClusterProfile"] = None

    @property
    def profile(self) -> "ClusterProfile":
        """The cluster profile (read once per backend object): its `umask` goes into job.sh."""
        if self._profile is None:
            from orchestrator.spec.profile import load_profile

            self._profile = load_profile()
        return self._profile

    def render(self, item: SubmitItem, group: SubmitGroup) -> str:
        spec, paths = item.spec, item.run.paths
        root = paths.root.parent.parent
        q = shlex.quote
        lines = [
            "#!/usr/bin/env bash",
            f"# orch local job: run {item.run.run_id} ({spec.name})",
            "set -eo pipefail",
            f"cd {q(os.getcwd())}",
            *_umask_line(self.profile),
        ]
        if spec.resources.setup:
            lines.append("# setup lines from the spec (resources.setup)")
            lines.extend(spec.resources.setup)
        lines += render_env_exports(spec.env)
        lines.append(f"export ORCH_RESULTS_ROOT={q(str(root.resolve()))}")
        if group.group_id:
            lines.append(f"export ORCH_SLOT_GROUP={q(group.group_id)}")
            lines.append(f"export ORCH_SLOT_LIMIT={q(str(group.max_parallel or os.cpu_count() or 1))}")
        lines.append(f"exec {q(sys.executable)} -m orchestrator.job {q(str(paths.root.resolve()))} --backend local")
        return "\n".join(lines) + "\n"

    def submit(self, group: SubmitGroup) -> list[str]:
        ids = []
        for item in group.items:
            script = self.render(item, group)
            paths = item.run.paths
            atomic_write_text(paths.job_script, script)
            paths.logs.mkdir(parents=True, exist_ok=True)
            n = record.submit(item.run, self.name) if item.run.state == State.PENDING else attempt_n(item.run.record)
            try:
                with open(paths.scheduler_log, "ab") as out:
                    proc = subprocess.Popen(
                        ["bash", str(paths.job_script)],
                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True, close_fds=True,
                    )
            except OSError as exc:
                record.submit_failed(item.run, self.name, f"could not start the job: {exc}", n=n)
                raise
            job_id = make_job_id(proc.pid)
            record.set_job_id(item.run, n, job_id)
            ids.append(job_id)
        return ids

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        out = {}
        for job_id in job_ids:
            alive = job_alive(job_id)
            out[job_id] = JobStatus(job_id, State.RUNNING if alive else None, "alive" if alive else "gone")
        return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        live = [j for j in job_ids if job_alive(j)]
        started_live = list(live)
        for job_id in live:
            _signal_group(job_id, signal.SIGTERM)
        deadline = time.monotonic() + KILL_WAIT
        while live and time.monotonic() < deadline:
            time.sleep(0.1)
            live = [j for j in live if job_alive(j)]
        # Whatever is left of each session, wrapper or stragglers. Only jobs seen alive above: a session
        # id cannot be reused while any member lives, so these ids still name this job's processes.
        for job_id in started_live:
            for member in session_members(parse_job_id(job_id)[0]):
                try:
                    os.kill(member, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def session_members(sid: int) -> list[int]:
    """Every live process of session `sid`: the job wrapper, the trainer's process group, its workers."""
    members = []
    for entry in os.listdir("/proc"):
        fields = _stat_fields(entry) if entry.isdigit() else None
        if fields and len(fields) > 3 and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def _signal_group(job_id: str, sig: int) -> None:
    """Signal the whole job: it is a session of its own (the trainer runs in its own group inside it)."""
    pid, _ = parse_job_id(job_id)
    for member in session_members(pid) or [pid]:
        try:
            os.kill(member, sig)
        except ProcessLookupError:
            pass
