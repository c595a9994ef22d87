"""Backends by name: the submit side (`get_backend`) and the job side (`job_environment`).

One table, imported lazily so `orch status` on a local tree never imports the SLURM code. The
rest of orch asks this module for a backend and never tests a backend's name itself.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.backends.base import Backend, JobEnvironment

# name -> (submit side "module:Class", job side "module:Class")
BACKENDS: dict[str, tuple[str, str]] = {
    "local": ("orchestrator.backends.local.submit:LocalBackend", "orchestrator.backends.local.job:LocalJobEnvironment"),
    "slurm": ("orchestrator.backends.slurm.submit:SlurmBackend", "orchestrator.backends.slurm.job:SlurmJobEnvironment"),
}
DEFAULT = "local"


def names() -> list[str]:
    return list(BACKENDS)


def _load(target: str) -> type:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _entry(name: str) -> tuple[str, str]:
    try:
        return BACKENDS[name or DEFAULT]
    except KeyError:
        raise UserError(f"unknown backend {name!r}", hint=f"use one of: {', '.join(BACKENDS)}") from None


def get_backend(name: str) -> "Backend":
    """The submit side: render, submit, poll many, cancel."""
    return _load(_entry(name)[0])()


def job_environment(name: str) -> "JobEnvironment":
    """The job side, for the job wrapper inside a running job."""
    return _load(_entry(name)[1])()
