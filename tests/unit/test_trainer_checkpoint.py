"""Checkpoints: atomic folders, rotation (keep last K + best), fallback past damaged ones, RNG state."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from trainers.framework.checkpoint import (CheckpointManager, find_checkpoint, list_checkpoints, load_model_weights, rng_state,
                                 set_rng_state, verify)


def _save(mgr: CheckpointManager, step: int, model: torch.nn.Module) -> Path:
    return mgr.save(step, model, {"step": step, "payload": torch.arange(4)}, tokens_seen=step * 10,
                    metrics={"val_loss": 1.0 / step})


def test_rotation_keeps_last_k_and_best(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    model = torch.nn.Linear(3, 3)
    for step in (10, 20, 30):
        _save(mgr, step, model)
    mgr.save_best(20, model, 200, {"val_loss": 0.5})
    found = list_checkpoints(tmp_path)
    assert [(c.kind, c.step) for c in found] == [("step", 20), ("step", 30), ("best", 20)]
    assert all((c.path / "COMPLETE").exists() and verify(c.path) is None for c in found)
    assert find_checkpoint(tmp_path).step == 30 and find_checkpoint(tmp_path, best=True).metrics["val_loss"] == 0.5
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))


def test_incomplete_folder_is_ignored_and_cleaned(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "ckpt", keep_last=3)
    model = torch.nn.Linear(3, 3)
    _save(mgr, 10, model)
    torn = tmp_path / "ckpt" / "step-00000020"  # a crash before the manifest: no COMPLETE marker
    torn.mkdir()
    (torn / "trainer_state.pt").write_bytes(b"partial")
    (tmp_path / "ckpt" / ".tmp-step-00000030-123").mkdir()
    assert [c.step for c in list_checkpoints(tmp_path)] == [10]
    mgr.clean_partial()
    assert not (tmp_path / "ckpt" / ".tmp-step-00000030-123").exists()


def test_load_latest_falls_back_past_damaged(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "ckpt", keep_last=3)
    model = torch.nn.Linear(3, 3)
    _save(mgr, 10, model)
    with torch.no_grad():
        model.weight.add_(1.0)
    _save(mgr, 20, model)
    _save(mgr, 30, model)
    (tmp_path / "ckpt" / "step-00000030" / "trainer_state.pt").write_bytes(b"x")  # truncated: size check
    state20 = tmp_path / "ckpt" / "step-00000020" / "trainer_state.pt"
    state20.write_bytes(b"\0" * state20.stat().st_size)  # same size, unreadable: load check
    warnings: list[str] = []
    loaded: dict[str, object] = {}

    def apply(info, state):  # type: ignore[no-untyped-def]
        fresh = torch.nn.Linear(3, 3)
        load_model_weights(fresh, info.model_dir)
        loaded.update(step=state["step"], weight=fresh.weight.detach().clone())

    info = mgr.load_latest(apply, warn=warnings.append)
    assert info is not None and info.step == 10 and loaded["step"] == 10
    assert len(warnings) == 2 and "step-00000030" in warnings[0] and "step-00000020" in warnings[1]
    assert not torch.equal(loaded["weight"], model.weight.detach())  # the step-10 weights, before the change


def test_hf_model_round_trip_with_tied_weights(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=20)
    a, b = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    mgr = CheckpointManager(tmp_path / "ckpt")
    path = _save(mgr, 5, a)
    assert (path / "model" / "config.json").exists()
    load_model_weights(b, path / "model")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert b.lm_head.weight is b.transformer.wte.weight


def test_rng_state_round_trip() -> None:
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
