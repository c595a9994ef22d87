"""Early stopping: patience, min_delta, mode, and its state surviving a checkpoint."""
from __future__ import annotations

import math

import pytest

from trainers.framework.early_stopping import EarlyStopping


def test_stops_after_patience_without_improvement() -> None:
    es = EarlyStopping("val_loss", "min", patience=2, min_delta=0.01)
    assert not es.update({"val_loss": 2.0}, 100)
    assert not es.update({"val_loss": 1.995}, 200)  # not better by more than min_delta
    assert es.update({"val_loss": 1.999}, 300)
    assert es.reason.startswith("early_stopping: val_loss did not improve by 0.01 for 2 evals")
    assert "best 2 at step 100" in es.reason


def test_improvement_resets_and_max_mode() -> None:
    es = EarlyStopping("acc", "max", patience=2)
    es.update({"acc": 0.5}, 1)
    es.update({"acc": 0.4}, 2)
    es.update({"acc": 0.6}, 3)
    assert es.bad_evals == 0 and es.best == 0.6
    assert not es.update({"acc": math.nan}, 4)  # NaN never improves
    assert es.update({"acc": 0.6}, 5)


def test_state_round_trip_and_missing_metric() -> None:
    es = EarlyStopping(patience=3)
    es.update({"val_loss": 1.0}, 1)
    es.update({"val_loss": 1.5}, 2)
    again = EarlyStopping(patience=3)
    again.load_state_dict(es.state_dict())
    assert (again.best, again.best_step, again.bad_evals) == (1.0, 1, 1)
    with pytest.raises(KeyError, match="not among the evaluation metrics"):
        again.update({"loss": 1.0}, 3)
