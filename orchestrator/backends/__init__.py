"""Backends: where a run's job script executes (this machine, or a SLURM cluster).

Each backend has two halves: a submit side (`base.Backend`: render, submit, poll many, cancel)
and a job side (`base.JobEnvironment`: job id, time limit, requeue, node rank), found by name in
`registry`.
"""
from orchestrator.backends.base import Backend, JobEnvironment, JobStatus, SubmitGroup, SubmitItem
from orchestrator.backends.registry import get_backend, job_environment

__all__ = ["Backend", "JobEnvironment", "JobStatus", "SubmitGroup", "SubmitItem", "get_backend", "job_environment"]
