"""Early stopping on an evaluation metric (`early_stopping: {metric, mode, patience, min_delta}`).

Kept apart from the loop so its state (best value, evaluations without improvement) goes into
checkpoints: a run resumed after preemption must not forget that it was already stalling.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Optional


class EarlyStopping:
    """Counts evaluations without an improvement of more than `min_delta`; stops after `patience`."""

    def __init__(self, metric: str = "val_loss", mode: Literal["min", "max"] = "min",
                 patience: int = 10, min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.bad_evals = 0

    @classmethod
    def from_spec(cls, cfg: Any) -> Optional["EarlyStopping"]:
        """None when the spec has no `early_stopping` section."""
        if cfg is None:
            return None
        return cls(cfg.metric, cfg.mode, cfg.patience, cfg.min_delta)

    def improved(self, value: float) -> bool:
        """Whether `value` beats the best so far by more than `min_delta` (NaN never does)."""
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, metrics: dict[str, Any], step: int) -> bool:
        """Feed one evaluation; True when training should stop now."""
        if self.metric not in metrics:
            raise KeyError(f"early_stopping.metric {self.metric!r} is not among the evaluation metrics "
                           f"({', '.join(sorted(metrics))})")
        value = float(metrics[self.metric])
        if self.improved(value):
            self.best, self.best_step, self.bad_evals = value, step, 0
        else:
            self.bad_evals += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.bad_evals >= self.patience

    @property
    def reason(self) -> str:
        """The stop reason recorded in run.json and metrics.json."""
        return (f"early_stopping: {self.metric} did not improve by {self.min_delta} for {self.patience} evals"
                f" (best {self.best:.6g} at step {self.best_step})" if self.best is not None else
                f"early_stopping: {self.metric} did not improve by {self.min_delta} for {self.patience} evals")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad_evals = state["best"], state["best_step"], int(state["bad_evals"])
