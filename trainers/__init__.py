"""Trainers run by `python -m trainers RUN_DIR` (or under `accelerate launch`).

Which class a spec's `trainer:` names is the registry's answer (`orchestrator.spec.registry`:
entry points `orch.trainers`, or a `package.module:Class` import path); each trainer's
`TrainerInfo.entry` is imported only here, on the job side, so `lm` never imports latentwire.
"""
from __future__ import annotations

import importlib
from typing import Any


def resolve_trainer(name: str) -> Any:
    """The Trainer subclass for a spec's `trainer:` value (imported lazily)."""
    from orchestrator.spec.registry import lookup

    entry = lookup(name).entry
    module_name, _, attr = entry.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if cls is None:
        raise ValueError(f"trainer {name!r}: module {module_name} has no {attr!r}")
    from trainers.framework.base import Trainer

    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise TypeError(f"trainer {name!r} ({entry}) is not a subclass of trainers.framework.base.Trainer")
    return cls
