"""LoRA on the latentwire decoder (peft), its checkpoints, gradient checkpointing and device_map placement.

- only the encoder and the LoRA adapters change in training; the base decoder's weights stay bit-identical;
- a run stopped at step 2 and resumed ends with the very weights and losses of an uninterrupted run;
- the `adapter` mode lands in metrics.json and predictions.jsonl of a finished run;
- gradient checkpointing gives the gradients of the plain backward; a device_map decoder trains on CPU.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from orchestrator.record.atomicio import read_jsonl
from orchestrator.record.tree import ResultsRoot
from orchestrator.spec.schema import spec_to_yaml
from tests.unit.test_latentwire import base_spec, make_trainer, squad_file
from trainers.latentwire.config import LatentWireSpec

LORA = {"rank": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}


def _base_weights(decoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in decoder.state_dict().items() if "lora_" not in k}


def test_lora_trains_adapters_and_encoder_only(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    trainer = make_trainer(tmp_path, model={"lora": LORA})
    decoder = trainer.decoder
    lora = {k: v.clone() for k, v in trainer.model.lora.items()}
    assert lora and all("lora_A" in k or "lora_B" in k for k in lora)
    assert {n for n, p in decoder.named_parameters() if p.requires_grad} == \
        {k.replace("/", ".").removeprefix("base_model.model.") for k in lora}
    base = _base_weights(decoder)
    encoder = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    for step in range(3):
        out = trainer.train_step(step)
        assert torch.isfinite(out["loss"]) and torch.isfinite(out["grad_norm"])
    after = _base_weights(decoder)
    assert base.keys() == after.keys()
    assert all(torch.equal(base[k], after[k]) for k in base), [k for k in base if not torch.equal(base[k], after[k])]
    assert all(not torch.equal(v, lora[k]) for k, v in trainer.model.lora.items() if "lora_B" in k)  # B starts at 0
    assert any(not torch.equal(v, encoder[k]) for k, v in trainer.model.encoder.state_dict().items())
    # the adapters are in the decoder's forward, and switching them off gives the original decoder back
    ids = torch.tensor([trainer.eval_examples[0].context_ids])
    with torch.no_grad():
        adapted = decoder(input_ids=ids).logits
        with trainer.peft.disable_adapter():
            original = decoder(input_ids=ids).logits
    assert not torch.allclose(adapted, original)


def _spec(tmp_path: Path, **over: Any) -> LatentWireSpec:
    return LatentWireSpec.model_validate(base_spec(squad_file(tmp_path / "squad.json"), **over))


def _fit(spec: LatentWireSpec, run_dir: Path, preempt_after: Optional[int] = None) -> Any:
    """Train in this process; with `preempt_after`, the scheduler's signal arrives after that many steps."""
    from trainers.framework.base import TrainerContext
    from trainers.framework.signals import signal_number
    from trainers.latentwire.trainer import LatentWireTrainer

    class Preempted(LatentWireTrainer):
        def train_step(self, step: int) -> dict[str, Any]:
            out = super().train_step(step)
            if step + 1 == preempt_after:
                os.kill(os.getpid(), signal_number(spec.resources.signal))
            return out

    trainer = Preempted(TrainerContext(run_dir, spec))
    outcome = trainer.fit()
    assert outcome.preempted == (preempt_after is not None)
    return trainer


def _new_run(root: Path, spec: LatentWireSpec) -> Path:
    run = ResultsRoot(root).create_run(spec.name, {"backend": "local"})
    run.paths.spec.write_text(spec_to_yaml(spec))
    return run.paths.root


def test_lora_checkpoints_resume_exactly_and_the_adapter_mode_is_reported(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    over = dict(model={"lora": LORA}, loss={"adapter_weight": 0.5},
                train={"max_steps": 4}, checkpoint={"every": 2, "keep_last": 2},
                eval={"every": 100, "modes": ["adapter", "latent", "token_budget"]})
    spec = _spec(tmp_path, **over)
    whole = _fit(spec, _new_run(tmp_path / "a", spec))

    run_dir = _new_run(tmp_path / "b", spec)
    _fit(spec, run_dir, preempt_after=2)
    [ckpt] = sorted((run_dir / "ckpt").glob("step-*"))
    saved = torch.load(ckpt / "model" / "model.pt", weights_only=True)
    assert any(k.startswith("lora.") for k in saved) and any(k.startswith("encoder.") for k in saved)
    assert not any("q_proj.base_layer" in k or "embed_tokens" in k for k in saved)  # never the frozen decoder
    resumed = _fit(spec, run_dir)  # attempt 2, from the step-2 checkpoint
    assert "resumed from step-00000002" in (run_dir / "logs" / "training.log").read_text()

    for k, v in whole.ctx.unwrap(whole.model).state_dict().items():
        assert torch.equal(v, resumed.ctx.unwrap(resumed.model).state_dict()[k]), k
    losses = lambda d: [(r["step"], r["loss"], r.get("adapter_loss")) for r in read_jsonl(d / "logs" / "train_diagnostics.jsonl")]  # noqa: E731
    assert losses(whole.ctx.paths.root) == losses(run_dir)

    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["adapter"]["compression"] == 1.0 and metrics["latent"]["compression"] > 1.0
    assert metrics["lora"]["rank"] == 4
    preds = read_jsonl(run_dir / "eval" / "predictions.jsonl")
    assert {p["mode"] for p in preds} == {"adapter", "latent", "token_budget"}


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    trainer = make_trainer(tmp_path, model={"gradient_checkpointing": True, "lora": LORA},
                           loss={"kd_weight": 0.0, "adapter_weight": 0.5})
    decoder, batch = trainer.decoder, [trainer.train_examples[i] for i in range(4)]
    assert decoder.is_gradient_checkpointing

    def grads() -> dict[str, torch.Tensor]:
        trainer.optimizer.zero_grad(set_to_none=True)
        decoder.train()
        try:
            trainer.losses(batch)["loss"].backward()
        finally:
            decoder.eval()
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters()}

    for module in decoder.modules():  # LoRA dropout off: both passes must draw nothing random
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    checkpointed = grads()
    decoder.gradient_checkpointing_disable()
    plain = grads()
    assert checkpointed.keys() == plain.keys()
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], rtol=1e-5, atol=1e-7)


def test_device_map_decoder_trains_and_evaluates_on_cpu(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    trainer = make_trainer(tmp_path, model={"device_map": "auto", "max_memory": {"cpu": "1GiB"}, "lora": LORA},
                           eval={"modes": ["text", "latent"]})
    assert {p.device.type for p in trainer.decoder.parameters()} == {"cpu"}  # one device: no hf_device_map
    before = _base_weights(trainer.decoder)
    out = trainer.train_step(0)
    assert torch.isfinite(out["loss"])
    assert all(torch.equal(v, trainer.decoder.state_dict()[k]) for k, v in before.items())
    metrics = trainer.evaluate(step=1)
    assert "text_embeddings_agreement" not in metrics and metrics["latent"]["n"] == 6
    assert "device_map auto: ['cpu']" in trainer.ctx.paths.training_log.read_text()


@pytest.mark.parametrize("lora, message", [({"rank": 2, "target_modules": ["no_such_proj"]}, "model.lora")])
def test_lora_errors_name_the_section(tmp_path: Path, lora: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, model={"lora": lora})
