"""The small interface every backend implements: render, submit, poll many, cancel.

Local and SLURM give the same states and semantics; what differs is how a job script starts.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

from orchestrator.errors import BackendUnavailable
from orchestrator.record.states import State

if TYPE_CHECKING:  # the spec pulls in pydantic; `orch status` must not pay for it
    from orchestrator.record.tree import Run
    from orchestrator.spec.schema import Spec


@dataclass
class JobStatus:
    """What a backend knows about one job id."""

    job_id: str
    state: Optional[State]  # None: the backend no longer knows the job (finished long ago, or never)
    raw_state: str = ""  # the backend's own word (e.g. Slurm's NODE_FAIL)
    reason: Optional[str] = None  # why it is pending (Priority, Resources, Dependency)
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    node: Optional[str] = None


class StaleAnswer(BackendUnavailable):
    """The scheduler did not answer (exit code 3). `last_known` holds the last answers seen for the
    jobs asked, if any: stale, for display only; `since` is when the failed query was made."""

    def __init__(self, message: str, hint: Optional[str] = None, *,
                 last_known: Optional[dict[str, JobStatus]] = None, since: Optional[float] = None) -> None:
        super().__init__(message, hint)
        self.last_known = last_known or {}
        self.since = since


@dataclass
class SubmitItem:
    """One run to submit, with its validated spec."""

    run: "Run"
    spec: "Spec"


@dataclass
class SubmitGroup:
    """Runs submitted together: a sweep (one array on SLURM) sharing a parallelism limit."""

    items: list[SubmitItem]
    max_parallel: Optional[int] = None
    group_id: Optional[str] = None  # the sweep id
    after_job_ids: list[str] = field(default_factory=list)  # afterok dependencies


class Backend(ABC):
    name: str = "?"

    @abstractmethod
    def render(self, item: SubmitItem, group: SubmitGroup) -> str:
        """The job script for one run (shown by --dry-run, written to the run's job.sh)."""

    def render_group(self, group: SubmitGroup) -> list[str]:
        """Scripts the backend submits for the group as a whole (a SLURM job array's dispatcher),
        beside each run's own; shown by --dry-run. None by default."""
        return []

    @abstractmethod
    def submit(self, group: SubmitGroup) -> list[str]:
        """Start (or enqueue) every run of the group; return one job id per item, in order.

        Implementations record each job id in its run's run.json as soon as it is known, so a
        failure part way leaves the runs already submitted on record.
        """

    @abstractmethod
    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Ask about many jobs in one call (one squeue, one process-table scan)."""

    @abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """Stop jobs: SIGTERM (the trainer may checkpoint), SIGKILL after a grace period."""


@dataclass(frozen=True)
class StopVerdict:
    """The scheduler's word on a terminating signal that came without the warning signal."""

    cause: str  # a FailureClass value: cancelled, node_fail, preempted or timeout
    requeued: bool = False  # the scheduler itself put the job back in its queue (a node failure)
    evidence: str = ""


class JobEnvironment(ABC):
    """The job side of a backend, asked by the job wrapper inside a running job (as submitit's
    `JobEnvironment`): who am I, how long may I run, who enforces that, how do I come back."""

    name: str = "?"
    #: True when the scheduler itself sends the warning signal and kills at the time limit; False
    #: when the wrapper must do both (the local backend).
    enforces_time_limit: bool = True
    #: True when a requeued job is started again by the scheduler (the wrapper exits); False when
    #: the wrapper itself loops into the next attempt.
    restarts_itself: bool = True

    @abstractmethod
    def job_id(self) -> Optional[str]:
        """This job's id as the backend's submit side recorded it (None when unknown)."""

    def restart_count(self) -> int:
        """How many times the scheduler restarted this same job (0 on the first start)."""
        return 0

    def node_rank(self) -> int:
        """This node's index among the job's nodes (0 on one node)."""
        return 0

    def num_nodes(self) -> int:
        return 1

    @abstractmethod
    def requeue(self) -> bool:
        """Ask for this job to run again after it stops; False (with the reason on stderr) if refused."""

    def started_at(self) -> Optional[float]:
        """When the job started (epoch seconds), if the backend knows."""
        return None

    def stop_verdict(self, log_lines: list[str]) -> Optional[StopVerdict]:
        """Why this job got a terminating signal (SIGTERM) with no warning before it: asked of the
        scheduler (`scancel`, a node failure it requeues, a preemption). None when nobody but a user
        can have sent it, or the scheduler cannot say: a cancellation."""
        return None

    def drop_requeue(self) -> None:
        """Undo a requeue the scheduler made on its own (the retry policy allows no further attempt)."""
