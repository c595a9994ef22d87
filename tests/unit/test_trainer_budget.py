"""Budgets: steps, tokens, epochs and training time (summed over attempts), whichever ends first."""
from __future__ import annotations

import pytest

from orchestrator.spec.schema import TrainSpec
from trainers.framework.base import Budget, TrainClock


def test_first_budget_wins() -> None:
    b = Budget.from_spec(TrainSpec(max_steps=100, max_tokens=5000), tokens_per_step=100, epoch_tokens=None)
    assert b.total_steps == 50
    assert b.reason(49, 4900) is None
    assert b.reason(50, 5000) == "max_tokens"
    assert Budget.from_spec(TrainSpec(max_steps=10, max_tokens=10**9), 100, None).reason(10, 1000) == "max_steps"


def test_epochs() -> None:
    b = Budget.from_spec(TrainSpec(epochs=2.5), tokens_per_step=1000, epoch_tokens=10_000)
    assert b.total_steps == 25
    assert b.reason(24, 24_000) is None and b.reason(25, 25_000) == "epochs"
    with pytest.raises(ValueError, match="epoch_tokens"):
        Budget.from_spec(TrainSpec(epochs=1), 1000, None)


def test_max_time_counts_earlier_attempts() -> None:
    b = Budget.from_spec(TrainSpec(max_time="00:10:00"), 100, None)
    assert b.total_steps is None and b.max_time_s == 600
    clock = TrainClock()
    clock.before = 599.0  # restored from the checkpoint of earlier attempts
    clock.start()
    assert not b.time_up(clock.total - 0.5)
    clock.before = 600.0
    assert b.time_up(clock.total)
