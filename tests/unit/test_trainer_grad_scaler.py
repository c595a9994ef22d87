"""The fp16 loss scale (Accelerate's GradScaler) is part of the trainer state a checkpoint holds."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from trainers.framework.base import Trainer


def _trainer(scaler: object) -> Trainer:
    return Trainer(SimpleNamespace(spec=None, accelerator=SimpleNamespace(scaler=scaler)))  # type: ignore[arg-type]


def _scaler_at(scale: float) -> torch.amp.GradScaler:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=2000)
    scaler.scale(torch.ones(()))  # the scale tensor is created lazily, on first use
    scaler.update(new_scale=scale)
    return scaler


def test_loss_scale_round_trips_through_the_trainer_state() -> None:
    state = _trainer(_scaler_at(1024.0)).state_dict()
    assert state["grad_scaler"]["scale"] == 1024.0
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    _trainer(fresh).load_state_dict(state)
    fresh.scale(torch.ones(()))
    assert fresh.get_scale() == 1024.0  # not the initial 65536: the first steps after resume are not skipped


def test_no_scaler_no_state_and_an_fp16_state_is_dropped_in_another_precision() -> None:
    assert "grad_scaler" not in _trainer(None).state_dict()
    _trainer(None).load_state_dict({"grad_scaler": _scaler_at(512.0).state_dict()})  # bf16 resume: ignored
