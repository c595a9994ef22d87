"""Trainers run by `python -m trainers RUN_DIR` (or under `accelerate launch`).

`lm` is the built-in language-model trainer; `latentwire` is imported only when a spec asks for
it; any `package.module:Class` subclassing `trainers.framework.base.Trainer` gets the same services.
"""
from __future__ import annotations

import importlib
from typing import Any

BUILTIN = {"lm": "trainers.lm.trainer:LMTrainer", "latentwire": "trainers.latentwire.trainer:LatentWireTrainer"}


def resolve_trainer(name: str) -> Any:
    """The trainer class for a spec's `trainer:` value (imported lazily: `lm` never imports latentwire)."""
    target = BUILTIN.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown trainer {name!r}: use {', '.join(BUILTIN)} or 'package.module:Class'")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"trainer {name!r}: module {module_name} has no {attr!r}") from None
    from trainers.framework.base import Trainer

    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise TypeError(f"trainer {name!r} is not a subclass of trainers.framework.base.Trainer")
    return cls
