"""The stub trainer's schema, for `trainer: stub_trainer:TRAINER` in the scheduler tests (torch-free).

The job itself is run by the stand-in `trainers` package beside this file (stub/trainers/__main__.py),
which reads `config:` from spec.yaml; `entry` is therefore never imported.
"""
from __future__ import annotations

from pydantic import Field

from orchestrator.spec.registry import TrainerInfo
from orchestrator.spec.sections import Section, Spec


class StubConfig(Section):
    seconds: float = Field(1.0, ge=0, description="how long the job 'trains' (resumable over attempts)")
    exit_code: int = Field(0, ge=0, le=255, description="the exit status once done")


class StubSpec(Spec):
    config: StubConfig = Field(default_factory=StubConfig)


TRAINER = TrainerInfo(name="stub", spec_class=StubSpec, entry="trainers.__main__:main",
                      description="sleeps config.seconds, checkpoints on a signal (scheduler tests)")
