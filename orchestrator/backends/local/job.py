"""The local backend's job side: the job is this wrapper's own process (started by job.sh's exec).

Nothing else enforces the time limit here, so the wrapper does it the way Slurm would; a
requeue is the wrapper looping into its next attempt.
"""
from __future__ import annotations

import os
from typing import Optional

from orchestrator.backends.base import JobEnvironment
from orchestrator.backends.local.submit import make_job_id


class LocalJobEnvironment(JobEnvironment):
    name = "local"
    enforces_time_limit = False
    restarts_itself = False

    def job_id(self) -> Optional[str]:
        # job.sh `exec`s the wrapper, so the job's pid (its session leader) is this process
        return make_job_id(os.getpid()) if os.getsid(0) == os.getpid() else None

    def requeue(self) -> bool:
        return True  # the wrapper starts the next attempt itself
