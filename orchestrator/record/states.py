"""Run states shared by every backend, and the exit codes the job side uses."""
from __future__ import annotations

from enum import Enum


class State(str, Enum):
    PENDING = "PENDING"  # created, not yet accepted by a backend
    QUEUED = "QUEUED"  # accepted, waiting for resources (local slot or Slurm queue)
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"  # stopped by a preemption/requeue signal; resumable
    STALLED = "STALLED"  # backend says running, but no heartbeat for too long

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        return self in ACTIVE


TERMINAL = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED, State.TIMEOUT, State.PREEMPTED})
ACTIVE = frozenset({State.PENDING, State.QUEUED, State.RUNNING, State.STALLED})

# Trainer exit codes, understood by the job wrapper on every backend.
EXIT_COMPLETED = 0
EXIT_REQUEUE = 75  # EX_TEMPFAIL: checkpointed after a preemption/time-limit signal; requeue me
