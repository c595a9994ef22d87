"""Checkpoints through Accelerate: the folder a save leaves, rotation, exact restore of optimizer, RNG,
GradScaler and registered state, and the fall-back past damaged checkpoints."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from orchestrator.record import checkpoints as ck
from trainers.framework.base import Trainer
from trainers.framework.checkpoint import CheckpointManager, load_for_generation, load_model_weights

REPO = Path(__file__).resolve().parents[2]


class Position:
    """A data position registered for checkpointing, as the framework registers the trainer's state."""

    def __init__(self) -> None:
        self.batches = 0

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches = state["batches"]


class Setup:
    """A prepared model + Adam optimizer on a fresh Accelerator, with a manager on `root`."""

    def __init__(self, root: Path, keep_last: int = 3, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.acc = Accelerator()
        model = torch.nn.Linear(4, 4)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        self.model, self.opt = self.acc.prepare(model, opt)
        self.pos = Position()
        self.acc.register_for_checkpointing(self.pos)
        self.mgr = CheckpointManager(root / "ckpt", self.acc, keep_last=keep_last, spec_text="name: t\n")

    def step(self) -> float:
        """One training step on a batch drawn from the global RNG (so RNG state matters)."""
        x = torch.randn(8, 4, device=self.acc.device)
        noise = random.random() + float(np.random.rand())
        loss = ((self.model(x) - noise) ** 2).mean()
        self.acc.backward(loss)
        self.opt.step()
        self.opt.zero_grad()
        self.pos.batches += 1
        return loss.item()

    def save(self, step: int, **metrics: float) -> Path:
        path = self.mgr.save(step, self.model, {"step": step, "world_size": 1}, tokens_seen=step * 8,
                             metrics=metrics)
        assert path is not None
        return path

    def load(self) -> tuple[Any, dict[str, Any], list[str]]:
        loops: dict[str, Any] = {}
        warnings: list[str] = []
        info = self.mgr.load_latest(self.model, lambda c, loop: loops.update(loop), warn=warnings.append)
        return info, loops, warnings


def test_a_save_leaves_one_sealed_folder_with_weights_once(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.step()
    path = s.save(10, val_loss=1.5)
    assert path == tmp_path / "ckpt" / "step-00000010"
    names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert names == {"model/model.pt", "state/optimizer.bin", "state/random_states_0.pkl",
                     "state/custom_checkpoint_0.pkl", "trainer_state.json", "spec.yaml", "manifest.json", "COMPLETE"}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["kind"] == "step" and manifest["step"] == 10
    assert manifest["tokens_seen"] == 80 and manifest["metrics"] == {"val_loss": 1.5}
    assert set(manifest["files"]) == set(manifest["sha256"]) == names - {"manifest.json", "COMPLETE"}
    assert json.loads((path / "trainer_state.json").read_text()) == {"step": 10, "world_size": 1}
    assert ck.validate(path, deep=True) is None
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))


def test_rotation_keeps_last_k_and_best_and_final(tmp_path: Path) -> None:
    s = Setup(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        s.step()
        s.save(step)
    s.mgr.save_best(20, s.model, 160, {"val_loss": 0.5})
    s.mgr.save_final(30, s.model, 240, {"val_loss": 0.6})
    found = ck.list_checkpoints(tmp_path)
    assert [(c.kind, c.step) for c in found] == [("step", 20), ("step", 30), ("best", 20), ("final", 30)]
    assert all(ck.validate(c.path, deep=True) is None for c in found)
    assert not (found[2].path / "state").exists() and (found[2].model_dir / "model.pt").exists()
    assert ck.find(tmp_path).step == 30 and ck.find(tmp_path, best=True).metrics["val_loss"] == 0.5


def test_restore_is_exact_optimizer_rng_and_registered_state(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    for _ in range(3):
        s.step()
    s.save(3)
    after = [s.step() for _ in range(4)]  # what an uninterrupted run does next
    with torch.no_grad():
        s.model.weight.mul_(0.0)  # and then a crash: the in-memory state is lost
    random.seed(999)
    torch.manual_seed(999)
    info, loops, warnings = s.load()
    assert info is not None and info.step == 3 and loops["step"] == 3 and not warnings
    assert s.pos.batches == 3
    assert [s.step() for _ in range(4)] == after  # weights, Adam moments, python/numpy/torch RNG: all restored


def test_a_fresh_process_resumes_through_the_same_files(tmp_path: Path) -> None:
    """A new Accelerator/model/optimizer (a requeued job) restores what the first one saved."""
    first = Setup(tmp_path, seed=1)
    for _ in range(2):
        first.step()
    first.save(2)
    expected = [first.step() for _ in range(3)]
    second = Setup(tmp_path, seed=2)  # different initial weights: everything must come from the checkpoint
    info, _, _ = second.load()
    assert info is not None and [second.step() for _ in range(3)] == expected


def test_damaged_checkpoints_fall_back_to_the_previous(tmp_path: Path) -> None:
    s = Setup(tmp_path, keep_last=5)
    for step in (10, 20, 30, 40):
        s.step()
        s.save(step)
    root = tmp_path / "ckpt"
    (root / "step-00000040" / "state" / "optimizer.bin").write_bytes(b"x")  # truncated: the sizes tell
    rng = root / "step-00000030" / "state" / "random_states_0.pkl"
    rng.write_bytes(b"\0" * rng.stat().st_size)  # same size: only the hash tells (Accelerate would ignore it)
    opt = root / "step-00000020" / "state" / "optimizer.bin"
    opt.write_bytes(b"\0" * opt.stat().st_size)  # same size, and the manifest restated: only loading tells
    manifest = json.loads((root / "step-00000020" / "manifest.json").read_text())
    assert ck.restate_file(manifest, "state/optimizer.bin", opt.read_bytes())
    (root / "step-00000020" / "manifest.json").write_text(json.dumps(manifest))
    info, loops, warnings = s.load()
    assert info is not None and info.step == 10 and loops["step"] == 10
    assert len(warnings) == 3
    assert "step-00000040 is damaged" in warnings[0] and "the manifest says" in warnings[0]
    assert "step-00000030 is damaged" in warnings[1] and "sha256" in warnings[1]
    assert "step-00000020 is damaged" in warnings[2] and "Error" in warnings[2]
    assert all("falling back to the previous one" in w for w in warnings)


def test_format_1_checkpoints_list_and_load_for_generation_but_do_not_resume(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainers.lm.tokenization import CharTokenizer

    old = tmp_path / "ckpt" / "step-00000005"
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=20))
    model.save_pretrained(str(old / "model"))
    CharTokenizer.from_text("abcdefgh").save(old / "model")
    (old / "trainer_state.pt").write_bytes(b"pickled")
    files = {p.relative_to(old).as_posix(): p.stat().st_size for p in old.rglob("*") if p.is_file()}
    (old / "manifest.json").write_text(json.dumps({"complete": True, "format": 1, "kind": "step", "step": 5,
                                                   "files": files}))
    (old / "COMPLETE").write_text("5\n")
    [info] = ck.list_checkpoints(tmp_path)
    assert info.format == 1 and not info.resumable and ck.validate(old, deep=True) is None
    loaded, tok, which = load_for_generation(tmp_path)
    assert which.step == 5 and tok is not None
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
    s = Setup(tmp_path)
    info, _, warnings = s.load()
    assert info is None and "cannot resume" in warnings[0]


def test_hf_model_round_trip_with_tied_weights(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=20)
    acc = Accelerator()
    a, b = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    path = CheckpointManager(tmp_path / "ckpt", acc).save(5, a, {"step": 5})
    assert path is not None and (path / "model" / "config.json").exists()
    assert not list((path / "state").glob("model*"))  # the weights are in model/ only
    load_model_weights(b, path / "model")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert b.lm_head.weight is b.transformer.wte.weight


def test_default_trainer_state_leaves_prepared_objects_to_accelerate() -> None:
    acc = Accelerator()
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(SimpleNamespace(spec=None))  # type: ignore[arg-type]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)  # not prepared: ours
    trainer.model, trainer.optimizer = acc.prepare(model, optimizer)  # prepared: save_state's
    trainer.sampler = Position()
    assert set(trainer.state_dict()) == {"scheduler", "sampler"}


def test_grad_scaler_state_round_trips_through_the_checkpoint(tmp_path: Path) -> None:
    """The GradScaler Accelerate holds is saved to state/scaler.pt and restored.

    Accelerate makes a GradScaler only for fp16 on a GPU (on CPU it runs fp16 as fp32, with no
    scaler); torch's CPU GradScaler is put in its place here so the save/load path runs on any
    machine. The GPU test below does the same with a real fp16 Accelerator.
    """
    s = Setup(tmp_path)
    scaler = s.acc.scaler = torch.amp.GradScaler(s.acc.device.type)
    scaler.scale(torch.ones(1, device=s.acc.device))  # makes the scale and growth-tracker tensors
    scaler.update(new_scale=1024.0)
    scaler._growth_tracker.fill_(7)  # type: ignore[union-attr]
    saved = scaler.state_dict()
    assert saved["scale"] == 1024.0 and saved["_growth_tracker"] == 7
    path = s.save(1)
    assert "state/scaler.pt" in json.loads((path / "manifest.json").read_text())["sha256"]
    scaler.update(new_scale=8.0)
    scaler._growth_tracker.fill_(0)  # type: ignore[union-attr]
    info, _, _ = s.load()
    assert info is not None and scaler.state_dict() == saved


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="fp16 mixed precision is CUDA-only in Accelerate: on CPU it makes no GradScaler")
def test_fp16_grad_scaler_round_trips_on_gpu(tmp_path: Path) -> None:
    # A process of its own: Accelerate's state is one per process and the other tests run without fp16.
    code = textwrap.dedent(f"""
        import torch
        from accelerate import Accelerator
        from trainers.framework.checkpoint import CheckpointManager
        acc = Accelerator(mixed_precision="fp16")
        net = torch.nn.Linear(8, 8)
        model, opt = acc.prepare(net, torch.optim.SGD(net.parameters(), lr=0.1))
        assert acc.scaler is not None
        for _ in range(3):
            with acc.autocast():
                loss = model(torch.randn(4, 8, device=acc.device)).float().pow(2).mean()
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
        acc.scaler.update(new_scale=512.0)
        saved = acc.scaler.state_dict()
        mgr = CheckpointManager({str(tmp_path / 'ckpt')!r}, acc)
        mgr.save(3, model, {{"step": 3}})
        acc.scaler.update(new_scale=2.0)
        assert mgr.load_latest(model, lambda c, s: None) is not None
        assert acc.scaler.state_dict() == saved, (acc.scaler.state_dict(), saved)
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
