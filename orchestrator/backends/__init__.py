"""Backends: where a run's job script executes (this machine, or a SLURM cluster)."""
from orchestrator.backends.base import Backend, JobStatus, SubmitGroup, SubmitItem, get_backend

__all__ = ["Backend", "JobStatus", "SubmitGroup", "SubmitItem", "get_backend"]
