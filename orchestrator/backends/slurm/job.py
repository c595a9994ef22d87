"""The SLURM backend's job side, read from the SLURM_* variables inside a batch job.

submitit's `SlurmJobEnvironment` reads them the way Slurm documents them (array ids, node list,
ranks); it earns its place here, inside the job.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

from orchestrator.backends.base import JobEnvironment


class SlurmJobEnvironment(JobEnvironment):
    name = "slurm"
    enforces_time_limit = True
    restarts_itself = True

    def __init__(self) -> None:
        self._env: Any = None
        self._start = time.time()

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

    def requeue(self) -> bool:
        """`scontrol requeue <id>`: the same job id comes back later as a new attempt."""
        from orchestrator.backends.slurm.cli import SlurmCLI
        from orchestrator.errors import OrchError

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
