"""The SLURM backend's job side, read from the SLURM_* variables inside a batch job.

submitit's `SlurmJobEnvironment` reads them the way Slurm documents them (array ids, node list,
ranks); it earns its place here, inside the job. The scheduler itself is asked one thing from
inside a job: why a SIGTERM came without the warning signal (`stop_verdict`), since Slurm sends
that same SIGTERM for `scancel`, for a node it marks DOWN (and then requeues the job on its own)
and for a preemption.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

from orchestrator.backends.base import JobEnvironment, StopVerdict
from orchestrator.record.states import State

SCONTROL_TIMEOUT = 10.0  # asked while Slurm's KillWait runs: a short, bounded question


class SlurmJobEnvironment(JobEnvironment):
    name = "slurm"
    enforces_time_limit = True
    restarts_itself = True

    def __init__(self) -> None:
        self._env: Any = None
        self._start = time.time()
        self._requeued_by_scheduler = False

    def _submitit(self) -> Any:
        if self._env is None:
            from submitit.slurm.slurm import SlurmJobEnvironment as _Env

            self._env = _Env()
        return self._env

    def job_id(self) -> Optional[str]:
        """`<array job>_<task>` inside arrays (the array's own SLURM_JOB_ID names another task's
        record), else the job id: the form orch records and `scontrol requeue` wants."""
        if not os.environ.get("SLURM_JOB_ID"):
            return None
        return str(self._submitit().job_id)

    def restart_count(self) -> int:
        try:
            return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        except ValueError:
            return 0

    def node_rank(self) -> int:
        return int(os.environ.get("SLURM_NODEID", "0") or 0)

    def num_nodes(self) -> int:
        return int(os.environ.get("SLURM_JOB_NUM_NODES", os.environ.get("SLURM_NNODES", "1")) or 1)

    def started_at(self) -> Optional[float]:
        return self._start

    def stop_verdict(self, log_lines: list[str]) -> Optional[StopVerdict]:
        """`scontrol show job` for this job, and slurmstepd's "*** JOB ... CANCELLED ... DUE TO ..."
        line in the job's output: CANCELLED is a `scancel`; PENDING/REQUEUED (or more restarts than
        this start saw) is the scheduler's own requeue after a node failure or a preemption."""
        from orchestrator.backends.slurm.cli import SlurmCLI
        from orchestrator.backends.slurm.parse import map_state, parse_show_job, stepd_cause
        from orchestrator.errors import OrchError

        job_id = self.job_id()
        if not job_id:
            return None
        ids = {job_id, os.environ.get("SLURM_JOB_ID", job_id)}
        said = stepd_cause(log_lines, ids)
        try:
            out = SlurmCLI().run(["scontrol", "-o", "show", "job", job_id], timeout=SCONTROL_TIMEOUT).stdout
        except OrchError as exc:
            print(f"orch: cannot ask Slurm why the job was stopped: {exc.message}", file=sys.stderr)
            out = ""
        fields = parse_show_job(out)
        raw = fields.get("JobState", "")
        try:
            restarts = int(fields.get("Restarts", "0") or 0)
        except ValueError:
            restarts = 0
        state = map_state(raw) if raw else None
        evidence = f"scontrol: JobState={raw or '?'} Restarts={restarts}" + (f"; slurmstepd: {said}" if said else "")
        if state == State.QUEUED or (raw and restarts > self.restart_count()):
            self._requeued_by_scheduler = True
            return StopVerdict(said if said in ("node_fail", "preempted") else "preempted", True, evidence)
        if state == State.CANCELLED:
            return StopVerdict("cancelled", False, evidence)
        if state == State.TIMEOUT or said == "timeout":
            return StopVerdict("timeout", False, evidence)
        if state == State.PREEMPTED or said == "preempted":
            return StopVerdict("preempted", False, evidence)
        if raw.startswith(("NODE_FAIL", "BOOT_FAIL")) or said == "node_fail":
            return StopVerdict("node_fail", False, evidence)
        if said == "cancelled":
            return StopVerdict("cancelled", False, evidence)
        return None  # still RUNNING by the scheduler's account: a signal sent by hand

    def requeue(self) -> bool:
        """`scontrol requeue <id>`: the same job id comes back later as a new attempt. A job the
        scheduler already requeued by itself (a node failure) is not asked twice."""
        from orchestrator.backends.slurm.cli import SlurmCLI
        from orchestrator.errors import OrchError

        if self._requeued_by_scheduler:
            return True
        job_id = self.job_id()
        if not job_id:
            print("orch: not inside a Slurm job (no SLURM_JOB_ID); cannot requeue", file=sys.stderr)
            return False
        try:
            SlurmCLI().run(["scontrol", "requeue", job_id], timeout=30)
        except OrchError as exc:
            print(f"orch: scontrol requeue {job_id} failed: {exc.message}", file=sys.stderr)
            return False
        return True

    def drop_requeue(self) -> None:
        """`scancel` the job's requeued copy: the retry policy has no attempt left for it."""
        from orchestrator.backends.slurm.cli import SlurmCLI
        from orchestrator.errors import OrchError

        job_id = self.job_id()
        if not job_id or not self._requeued_by_scheduler:
            return
        try:
            SlurmCLI().run(["scancel", job_id], timeout=SCONTROL_TIMEOUT)
        except OrchError as exc:
            print(f"orch: scancel {job_id} (the scheduler's requeue) failed: {exc.message}", file=sys.stderr)
        self._requeued_by_scheduler = False
