"""The experiment spec's public names, in one place.

- `orchestrator.spec.sections`: units (durations, memory) and the control plane's sections, `Spec`.
- `orchestrator.spec.registry`: the trainers (entry points `orch.trainers`) and their schemas.
- `orchestrator.spec.load`: YAML -> validated specs (extends, --set, sweeps, file:line errors).

A trainer's own sections (`model`, `data`, ...) are in its torch-free trainers/<name>/config.py.
"""
from __future__ import annotations

from orchestrator.spec.load import (ResolvedSpec, check_key_path, deep_merge, load_spec, parse_overrides,
                                    spec_from_data, spec_from_run, spec_to_yaml)
from orchestrator.spec.registry import TrainerInfo, UnknownTrainer, spec_class_for
from orchestrator.spec.sections import (FAILURE_CLASSES, CheckSpec, CheckpointSpec, Duration, EarlyStoppingSpec,
                                        EvalSpec, Memory, MetricsSpec, MonitorSpec, PreserveSpec, ResourcesSpec, RetrySpec,
                                        Section, SlurmTime, Spec, SweepSpec, TRACKERS, TrainSpec, format_slurm_time,
                                        parse_duration, parse_mem)

__all__ = [
    "FAILURE_CLASSES", "CheckSpec", "CheckpointSpec", "Duration", "EarlyStoppingSpec", "EvalSpec", "Memory", "MetricsSpec",
    "MonitorSpec", "PreserveSpec", "ResolvedSpec", "ResourcesSpec", "RetrySpec", "Section", "SlurmTime", "Spec",
    "SweepSpec", "TRACKERS", "TrainSpec", "TrainerInfo", "UnknownTrainer", "check_key_path", "deep_merge", "format_slurm_time",
    "load_spec", "parse_duration", "parse_mem", "parse_overrides", "spec_class_for", "spec_from_data",
    "spec_from_run", "spec_to_yaml",
]
