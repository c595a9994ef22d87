"""Attempt records in run.json, shared by every backend and the job wrapper.

An attempt is recorded *before* its job starts (so the job never races the submitter), its job
id is filled in once the backend returns it, and the job wrapper stamps start, end, host and
exit status. A requeue on SLURM (same job id, new start) becomes a new attempt.
"""
from __future__ import annotations

from typing import Any, Optional

from orchestrator.record.tree import Run, now_iso
from orchestrator.record.states import State


def open_attempt(run: Run, backend: str, reason: str = "submit") -> int:
    """Record a new, not yet started attempt; returns its number (1-based)."""
    holder: dict[str, int] = {}

    def mutate(rec: dict[str, Any]) -> None:
        attempts = rec.setdefault("attempts", [])
        n = len(attempts) + 1
        attempts.append({"n": n, "backend": backend, "job_id": None, "submitted_at": now_iso(), "reason": reason})
        rec["backend"] = backend
        rec["state"] = str(State.QUEUED)
        for key in ("exit_code", "failure", "ended_at"):
            rec.pop(key, None)
        holder["n"] = n

    run.update(mutate)
    return holder["n"]


def set_job_id(run: Run, n: int, job_id: str) -> None:
    def mutate(rec: dict[str, Any]) -> None:
        for att in rec.get("attempts", []):
            if att.get("n") == n:
                att["job_id"] = job_id

    run.update(mutate)


def current_attempt(rec: dict[str, Any]) -> Optional[dict[str, Any]]:
    attempts = rec.get("attempts") or []
    return attempts[-1] if attempts else None


def current_job_id(rec: dict[str, Any]) -> Optional[str]:
    att = current_attempt(rec)
    return att.get("job_id") if att else None


def abandon_attempt(run: Run, n: int, error: str) -> None:
    """A submission that failed after the attempt was recorded: keep the record, say why."""

    def mutate(rec: dict[str, Any]) -> None:
        for att in rec.get("attempts", []):
            if att.get("n") == n:
                att["state"] = str(State.FAILED)
                att["error"] = error
        rec["state"] = str(State.FAILED)
        rec["failure"] = {"class": "submit_error", "summary": error}

    run.update(mutate)
