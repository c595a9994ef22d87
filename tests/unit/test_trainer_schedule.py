"""Learning-rate schedule (nanoGPT's: linear warmup, cosine/linear decay to min_lr) and optimizer groups."""
from __future__ import annotations

import math

import pytest
import torch

from orchestrator.spec.schema import TrainSpec
from trainers.lm.trainer import build_optimizer, build_scheduler, lr_at, warmup_steps


def test_cosine_matches_nanogpt() -> None:
    def nanogpt(it: int) -> float:  # model/train.py get_lr, lr 1e-3, warmup 100, decay 2000, min 1e-4
        if it < 100:
            return 1e-3 * (it + 1) / (100 + 1)
        if it > 2000:
            return 1e-4
        ratio = (it - 100) / (2000 - 100)
        return 1e-4 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    for it in (0, 1, 50, 99, 100, 101, 500, 1000, 1999, 2000, 2500):
        assert lr_at(it, 1e-3, 1e-4, 100, 2000, "cosine") == pytest.approx(nanogpt(it), rel=1e-12)


def test_linear_and_constant() -> None:
    assert lr_at(10, 1.0, 0.0, 10, 110, "linear") == pytest.approx(1.0)
    assert lr_at(60, 1.0, 0.0, 10, 110, "linear") == pytest.approx(0.5)
    assert lr_at(110, 1.0, 0.0, 10, 110, "linear") == 0.0
    assert lr_at(5000, 1.0, 0.1, 10, 110, "constant") == 1.0
    assert lr_at(5000, 1.0, 0.1, 10, None, "cosine") == 1.0  # time-only budget: no horizon


def test_warmup_fraction_and_scheduler_steps() -> None:
    t = TrainSpec(max_steps=200, warmup_fraction=0.05, lr=1e-2, min_lr=1e-3)
    assert warmup_steps(t, 200) == 10
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(t, model, torch.device("cpu"))
    sched = build_scheduler(t, opt, 200)
    seen = []
    for _ in range(200):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(1e-2 / 11) and max(seen) == pytest.approx(1e-2)
    assert seen[-1] == pytest.approx(1e-3, rel=1e-2)


def test_weight_decay_only_on_matrices() -> None:
    t = TrainSpec(max_steps=1, weight_decay=0.1)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 4))
    opt = build_optimizer(t, model, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
