"""Pure parsers for Slurm's text output, and the Slurm -> orch state table.

Kept free of subprocess calls so unit tests can feed them output recorded from the real
test cluster (tests/unit/golden/slurm/). Formats are always requested explicitly
(`squeue -o`, `sacct -o --parsable2`), never scraped from the human-readable defaults.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

from orchestrator.record.states import State
from orchestrator.backends.base import JobStatus

# squeue: one line per job/array task (-r), '|'-separated. %i is "<arrayjob>_<task>" for array
# tasks (even pending ones with -r) and the plain id otherwise; %r is the pending reason.
SQUEUE_FIELDS = ("%i", "%T", "%r", "%N")
SQUEUE_FORMAT = "|".join(SQUEUE_FIELDS)

# sacct: -X (allocations only, no steps), --parsable2. Still-pending array tasks come back
# collapsed as "6_[2-5%2]"; see expand_array_id.
SACCT_FIELDS = ("JobID", "State", "ExitCode", "NodeList", "Reason")
SACCT_FORMAT = ",".join(SACCT_FIELDS)

# Slurm's job states (squeue's %T and sacct's State) -> orch's states. The raw word is kept
# in JobStatus.raw_state, so NODE_FAIL and OUT_OF_MEMORY stay visible as FAILED's cause.
STATE_MAP: dict[str, State] = {
    # waiting: accepted by the scheduler, not running
    "PENDING": State.QUEUED,
    "REQUEUED": State.QUEUED,  # requeued and waiting for its next start
    "REQUEUE_FED": State.QUEUED,
    "REQUEUE_HOLD": State.QUEUED,
    "RESV_DEL_HOLD": State.QUEUED,
    "CONFIGURING": State.QUEUED,  # nodes allocated and booting; the job has not started
    "SUSPENDED": State.QUEUED,  # paused by the scheduler (gang scheduling/preemption); not progressing
    "STOPPED": State.QUEUED,
    # running (including the tail of a run: epilog, stage-out, signalling)
    "RUNNING": State.RUNNING,
    "COMPLETING": State.RUNNING,
    "SIGNALING": State.RUNNING,
    "STAGE_OUT": State.RUNNING,
    "RESIZING": State.RUNNING,
    # ended
    "COMPLETED": State.COMPLETED,
    "CANCELLED": State.CANCELLED,
    "TIMEOUT": State.TIMEOUT,
    "DEADLINE": State.TIMEOUT,  # missed its --deadline: a time limit in all but name
    "PREEMPTED": State.PREEMPTED,
    "FAILED": State.FAILED,
    "NODE_FAIL": State.FAILED,
    "BOOT_FAIL": State.FAILED,
    "OUT_OF_MEMORY": State.FAILED,
    "SPECIAL_EXIT": State.FAILED,
    "REVOKED": State.CANCELLED,  # a federated sibling started elsewhere
}

# Raw Slurm states -> orch's failure classes (spec.FAILURE_CLASSES), for retry policy.
FAILURE_CLASS: dict[str, str] = {
    "NODE_FAIL": "node_fail",
    "BOOT_FAIL": "node_fail",
    "OUT_OF_MEMORY": "oom",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "PREEMPTED": "preempted",
    "CANCELLED": "cancelled",
}


def map_state(raw: str) -> Optional[State]:
    """orch's state for a Slurm state word; sacct's "CANCELLED by 0" counts as CANCELLED."""
    word = raw.strip().split(" ", 1)[0].rstrip("+").upper()
    if not word:
        return None
    return STATE_MAP.get(word)  # an unknown word: the backend cannot say; markers decide


def base_job_id(job_id: str) -> str:
    """'123_4' -> '123' (the array job); '123' -> '123'."""
    return job_id.split("_", 1)[0]


def expand_array_id(job_id: str) -> list[str]:
    """'6_[2-5%2]' -> ['6_2', ..., '6_5']; '6_[1,3-4]' -> ['6_1', '6_3', '6_4']; '7' -> ['7']."""
    m = re.fullmatch(r"(\d+)_\[([^\]]*)\]", job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%", 1)[0]
    out: list[str] = []
    for part in spec.split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        step = 1
        if ":" in hi:
            hi, step_s = hi.split(":", 1)
            step = int(step_s)
        for i in range(int(lo), int(hi or lo) + 1, step):
            out.append(f"{base}_{i}")
    return out


def parse_exit_code(text: str) -> tuple[Optional[int], Optional[int]]:
    """sacct's 'code:signal' -> (code, signal); '' -> (None, None)."""
    code, _, sig = text.strip().partition(":")
    try:
        return int(code), (int(sig) if sig else None)
    except ValueError:
        return None, None


def _clean(value: str) -> Optional[str]:
    value = value.strip()
    return None if value in ("", "None", "(null)", "None assigned", "N/A") else value


def parse_squeue(text: str) -> dict[str, JobStatus]:
    """Lines of `squeue -h -r -t all -o SQUEUE_FORMAT` -> {job id: status}."""
    out: dict[str, JobStatus] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < len(SQUEUE_FIELDS):
            continue
        job_id, raw, reason, node = (p.strip() for p in parts[:4])
        state = map_state(raw)
        # Slurm leaves the last scheduling reason on ended jobs (e.g. "JobLaunchFailure" on
        # a job killed by a signal); only a waiting job's reason means something to a user.
        keep_reason = state == State.QUEUED
        for jid in expand_array_id(job_id):
            if jid != job_id and jid in out:
                continue  # a task's own line beats the range line of its array
            out[jid] = JobStatus(jid, state, raw, _clean(reason) if keep_reason else None, node=_clean(node))
    return out


def parse_sacct(text: str) -> dict[str, JobStatus]:
    """Lines of `sacct -X -n --parsable2 -o SACCT_FORMAT` -> {job id: status}.

    Without --duplicates sacct prints only the newest record of a requeued job, which is
    the one that matters.
    """
    out: dict[str, JobStatus] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < len(SACCT_FIELDS):
            continue
        job_id, raw, exit_text, node, reason = parts[:5]
        state = map_state(raw)
        code, sig = parse_exit_code(exit_text)
        job_id = job_id.strip()
        for jid in expand_array_id(job_id):
            if jid != job_id and jid in out:
                continue  # sacct's '41_[0-2%1]' range line may repeat tasks listed on their own
            out[jid] = JobStatus(
                jid, state, raw.strip(), _clean(reason) if state == State.QUEUED else None,
                exit_code=code, signal=sig or None, node=_clean(node),
            )
    return out


def parse_show_job(text: str) -> dict[str, str]:
    """`scontrol -o show job ID` -> the few fields orch reads (JobState, Reason, Restarts, ExitCode,
    NodeList). Matched by name, since values such as Command= may hold spaces."""
    out: dict[str, str] = {}
    for key in ("JobId", "JobState", "Reason", "Restarts", "ExitCode", "NodeList", "BatchFlag"):
        m = re.search(rf"(?:^|\s){key}=(\S*)", text)
        if m:
            out[key] = m.group(1)
    return out


def show_job_status(job_id: str, text: str) -> Optional[JobStatus]:
    """A JobStatus from `scontrol -o show job` (None when it does not describe a job)."""
    fields = parse_show_job(text)
    raw = fields.get("JobState", "")
    if not raw:
        return None
    state = map_state(raw)
    code, sig = parse_exit_code(fields.get("ExitCode", ""))
    return JobStatus(job_id, state, raw, _clean(fields.get("Reason", "")) if state == State.QUEUED else None,
                     exit_code=code, signal=sig or None, node=_clean(fields.get("NodeList", "")))


# The line slurmstepd writes into a job's output when it stops the job: "*** JOB 42 ON n1 CANCELLED
# AT 2026-12-03T11:33:35 DUE TO NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***" (arrays: JOB 41_2).
STEPD_LINE = re.compile(r"\*\*\* (?:JOB|STEP) (\S+) ON \S+ CANCELLED AT \S+(?: DUE TO ([A-Z]+(?: [A-Z]+)*))?")
STEPD_CAUSE = {"NODE FAILURE": "node_fail", "PREEMPTION": "preempted", "TIME LIMIT": "timeout"}


def stepd_cause(lines: Iterable[str], job_ids: Iterable[str]) -> Optional[str]:
    """Why slurmstepd stopped one of `job_ids`, from its last line in the job's output: node_fail,
    preempted, timeout, cancelled (a plain `scancel`), or None when it wrote nothing."""
    wanted = set(job_ids)
    cause: Optional[str] = None
    for line in lines:
        m = STEPD_LINE.search(line)
        if m and (m.group(1).split(".", 1)[0] in wanted):
            cause = STEPD_CAUSE.get((m.group(2) or "").strip(), "cancelled" if not m.group(2) else None)
    return cause


def parse_show_config(text: str) -> dict[str, str]:
    """`scontrol show config` -> {'MaxArraySize': '1001', ...} (first block only)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out.setdefault(key.strip(), value.strip())
    return out


@dataclass(frozen=True)
class ClusterConfig:
    """The few scheduler settings the backend needs."""

    max_array_size: int = 1001
    accounting: bool = False
    cluster_name: str = ""
    min_job_age: int = 300
    version: str = ""

    @classmethod
    def from_show_config(cls, text: str) -> "ClusterConfig":
        cfg = parse_show_config(text)
        storage = cfg.get("AccountingStorageType", "")
        try:
            max_array = int(cfg.get("MaxArraySize", "1001"))
        except ValueError:
            max_array = 1001
        m = re.match(r"(\d+)", cfg.get("MinJobAge", ""))
        return cls(
            max_array_size=max_array,
            accounting=bool(storage) and not storage.endswith("/none") and storage != "(null)",
            cluster_name=cfg.get("ClusterName", ""),
            min_job_age=int(m.group(1)) if m else 300,
            version=cfg.get("SLURM_VERSION", ""),
        )


def merge_statuses(live: dict[str, JobStatus], accounted: dict[str, JobStatus], ids: Iterable[str]) -> dict[str, JobStatus]:
    """squeue is the truth for waiting and running jobs (current pending reason); sacct
    fills in exit codes for ended ones and jobs that aged out of squeue (MinJobAge)."""
    out: dict[str, JobStatus] = {}
    for jid in ids:
        q, a = live.get(jid), accounted.get(jid)
        if q is None and "_" in jid and base_job_id(jid) in live:
            # Tasks cancelled while still pending never become records of their own: squeue
            # shows only the array's record ('41', CANCELLED), which speaks for them.
            meta = live[base_job_id(jid)]
            q = JobStatus(jid, meta.state, meta.raw_state, meta.reason, meta.exit_code, meta.signal, meta.node)
        if q is not None and (q.state is None or not q.state.terminal or a is None):
            status = q
            if a is not None and status.exit_code is None:
                status.exit_code, status.signal = a.exit_code, a.signal
        elif a is not None:
            status = a
            if q is not None and q.node and not a.node:
                status.node = q.node
        else:
            status = JobStatus(jid, None, "", None)
        out[jid] = status
    return out
