"""A user's own trainer, plugged in with `trainer: tests.integration.example_trainer:TinyRegressionTrainer`.

It proves the contract: three methods (setup, train_step, evaluate) and the framework adds
checkpoints, resume, signals, early stopping, budgets, logging and heartbeats. The data is a
fixed random linear map; the data position is a step counter, so resume is exact.

It brings its own schema (`config_class = ToySpec`): a `toy:` section that `orch submit`
validates with file:line errors, like a built-in trainer's sections.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from orchestrator.spec.sections import Section, Spec
from trainers.framework.base import Trainer


class ToySection(Section):
    width: int = Field(8, ge=1, description="the size of the linear map to learn")
    batch: int = Field(16, ge=1, description="examples per step")


class ToySpec(Spec):
    """The control plane's sections plus `toy:`."""

    toy: ToySection = Field(default_factory=ToySection)


class BatchPosition:
    """The data position: which batch comes next (checkpointed through the default state_dict)."""

    def __init__(self) -> None:
        self.batches = 0

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches = state["batches"]


class TinyRegressionTrainer(Trainer):
    """Fit y = W x with a linear layer; `toy: {width: 8, batch: 16}` in the spec."""

    config_class = ToySpec
    metrics = ("loss", "val_loss")

    def setup(self) -> None:
        self.dim, self.batch = self.spec.toy.width, self.spec.toy.batch
        torch.manual_seed(self.spec.seed)
        self.target = torch.randn(self.dim, self.dim)
        model = torch.nn.Linear(self.dim, self.dim, bias=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.spec.train.lr)
        self.model, self.optimizer = self.ctx.accelerator.prepare(model, optimizer)
        self.sampler = BatchPosition()
        self.tokens_per_step = self.batch * self.ctx.world_size

    def _batch(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.spec.seed * 1000 + k)
        x = torch.randn(self.batch, self.dim, generator=g)
        return x.to(device), (x @ self.target.T).to(device)

    def train_step(self, step: int) -> dict[str, Any]:
        x, y = self._batch(self.sampler.batches, self.ctx.device)
        self.sampler.batches += 1
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        self.ctx.accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return {"loss": loss}

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, Any]:
        x, y = self._batch(-1, self.ctx.device)  # a fixed held-out batch
        return {"val_loss": self.ctx.reduce_mean({"l": torch.nn.functional.mse_loss(self.model(x), y)})["l"]}
