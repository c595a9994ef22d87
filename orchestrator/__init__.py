"""orch: run, watch, check and preserve ML experiments on local machines and SLURM.

The control plane never imports torch. `orchestrator.load()` returns pandas tables of runs for
notebooks (imported lazily).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: Any = "results") -> Any:
    """Runs, metrics history and diagnostics of a results tree or bundle, as pandas DataFrames."""
    from orchestrator.analysis.notebook import load as _load

    return _load(path)
