"""The latentwire trainer's contracts, on a tiny random Llama and a hand-made SQuAD file (no shared data).

- the decoder is frozen: bit-identical weights after optimizer steps, while gradients reach the encoder;
- the inputs_embeds path is exact: `embeddings` mode generates what `text` mode does at temperature 0;
- the spec: one decoder source, adapter/heads/modes validation, and loading through `orch`'s loader.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.errors import UserError
from orchestrator.record.tree import ResultsRoot
from orchestrator.spec.schema import deep_merge, load_spec, spec_class_for, spec_to_yaml
from trainers.latentwire.config import LatentWireModelSpec, LatentWireSpec

ALL_MODES = ("text", "embeddings", "anchor", "adapter", "latent", "token_budget")
WORDS = ("river castle duke army bishop harbor council treaty valley merchant knight village tower "
         "monastery battle crown island forest bridge market").split()


def squad_file(path: Path, articles: int = 4, paragraphs: int = 3, questions: int = 4) -> Path:
    """A SQuAD v2.0-layout file with deterministic text; one unanswerable question per paragraph."""
    data = []
    for a in range(articles):
        paras = []
        for p in range(paragraphs):
            words = [WORDS[(a * 7 + p * 3 + i) % len(WORDS)] for i in range(40)]
            context = f"In {1000 + 37 * a + p} the " + " ".join(words) + "."
            qas = []
            for q in range(questions):
                answer = words[5 * q + 1]
                qas.append({"id": f"a{a}p{p}q{q}", "question": f"Which {words[5 * q]} is named {q}?",
                            "answers": [{"text": answer, "answer_start": context.index(answer)}],
                            "is_impossible": False})
            qas.append({"id": f"a{a}p{p}x", "question": "Who is unknown?", "answers": [], "is_impossible": True,
                        "plausible_answers": [{"text": words[0], "answer_start": 0}]})
            paras.append({"context": context, "qas": qas})
        data.append({"title": f"Article {a}", "paragraphs": paras})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


def base_spec(data_path: Path, **over: Any) -> dict[str, Any]:
    spec = {
        "name": "lw-unit", "trainer": "latentwire", "seed": 3,
        "model": {"decoder": "tiny-random-llama",
                  "decoder_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                     "num_attention_heads": 4, "num_key_value_heads": 2, "initializer_range": 0.3},
                  "latent_len": 4, "encoder_layers": 1, "encoder_heads": 2, "encoder_dim": 16,
                  "max_context_tokens": 48, "max_answer_tokens": 4},
        "tokenizer": {"type": "bpe", "vocab_size": 300},
        "data": {"path": str(data_path), "val_fraction": 0.3, "train_samples": 24, "eval_samples": 6},
        "loss": {"kd_weight": 0.5, "kd_topk": 8, "kce_weight": 0.5, "entropy_weight": 0.1},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 0,
                  "log_every": 1, "device": "cpu"},
        "eval": {"every": 100, "batch_size": 3, "max_new_tokens": 5},
        "checkpoint": {"every": 100},
        "resources": {"cpus_per_task": 1},
    }
    return deep_merge(spec, over)


def make_trainer(tmp_path: Path, **over: Any) -> Any:
    return set_up(tmp_path, LatentWireSpec.model_validate(base_spec(squad_file(tmp_path / "squad.json"), **over)))


def set_up(tmp_path: Path, spec: LatentWireSpec) -> Any:
    """A LatentWireTrainer for `spec` in a new run folder under tmp_path/results, set up (models loaded)."""
    from trainers.framework.base import TrainerContext
    from trainers.latentwire.trainer import LatentWireTrainer

    run = ResultsRoot(tmp_path / "results").create_run(spec.name, {"backend": "local"})
    run.paths.spec.write_text(spec_to_yaml(spec))
    trainer = LatentWireTrainer(TrainerContext(run.paths.root, spec))
    trainer.setup()
    return trainer


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    torch.set_num_threads(1)
    return make_trainer(tmp_path_factory.mktemp("lw"))


# ----------------------------------------------------------------------------- training contracts
def test_decoder_stays_frozen_and_gradients_reach_the_encoder(trainer: Any) -> None:
    decoder = trainer.decoder
    assert not decoder.training and not any(p.requires_grad for p in decoder.parameters())
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    # gradients: one backward of the full objective (with KD and entropy) reaches every encoder part
    parts = trainer.losses([trainer.train_examples[i] for i in range(4)])
    parts["loss"].backward()
    grads = {n: p.grad for n, p in trainer.model.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values())
    for name in ("encoder.proj_in.weight", "encoder.queries", "encoder.adapter.weight", "encoder.gain"):
        assert grads[name].abs().sum() > 0, name
    assert all(p.grad is None for p in decoder.parameters())
    trainer.optimizer.zero_grad(set_to_none=True)

    outs = [trainer.train_step(s) for s in range(3)]
    for key in ("loss", "tf_loss", "first_loss", "kce_loss", "kd_loss", "entropy", "first_acc", "first_acc_top5",
                "grad_norm"):
        assert torch.isfinite(torch.as_tensor(outs[-1][key])).all(), key
    after = decoder.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"decoder weight {k} changed"
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, encoder_before[k])]
    assert "encoder.queries" in changed and "encoder.proj_in.weight" in changed
    assert not decoder.training  # train mode only inside a step


def test_diagnostics_and_collapse_alarm(trainer: Any) -> None:
    trainer.train_step(0)
    record: dict[str, Any] = {}
    trainer.step = 200
    trainer._collapse_since = None
    trainer.spec.eval.collapse_min_diversity = 100  # any batch counts as collapsed
    trainer.spec.eval.collapse_patience = 1
    try:
        trainer.log_extras(record)
    finally:
        trainer.spec.eval.collapse_min_diversity = 4
        trainer.spec.eval.collapse_patience = 50
    assert 1 <= record["prediction_diversity"] <= 4
    assert record["dominant_predictions"] and sum(n for _, n in record["dominant_predictions"]) <= 4
    assert record["dominant_share"] == record["dominant_predictions"][0][1] / 4
    assert record["mode_collapse"] is True
    log = trainer.ctx.paths.training_log.read_text()
    assert "WARNING: mode collapse" in log


def test_one_dominant_first_token_is_collapse_even_with_enough_distinct_ones(trainer: Any) -> None:
    """Diversity alone passes at collapse (3 answers of a batch of 64 can differ): the dominant share tells."""
    ev = trainer.spec.eval
    trainer.step, trainer._collapse_since, trainer._collapse_warned = 300, None, False
    record = {"prediction_diversity": 5, "dominant_share": 0.9, "batch_size_seen": 64,
              "dominant_predictions": [["the", 58], ["a", 3]]}
    old = (ev.collapse_min_diversity, ev.collapse_patience)
    ev.collapse_min_diversity, ev.collapse_patience = 4, 1
    try:
        trainer._check_collapse(record)
        assert record["mode_collapse"] is True
        healthy = {**record, "dominant_share": 0.3}
        trainer._check_collapse(healthy)
        assert healthy["mode_collapse"] is False
    finally:
        ev.collapse_min_diversity, ev.collapse_patience = old
    assert "the most frequent 90% of it" in trainer.ctx.paths.training_log.read_text()


# ----------------------------------------------------------------------------- evaluation contracts
def test_embeddings_mode_equals_text_mode_at_temperature_zero(trainer: Any) -> None:
    from trainers.latentwire.evaluation import ModeRunner

    runner = ModeRunner(trainer.decoder, trainer.ctx.unwrap(trainer.model), trainer.tokenizer, trainer.pieces,
                        trainer.spec.model.latent_len, trainer.spec.eval, trainer.ctx.device,
                        trainer.ctx.accelerator.autocast)
    batch = trainer.eval_examples[:6]
    lengths = {len(runner.prompt_ids("text", ex)) for ex in batch}
    assert len(lengths) > 1, "the batch must mix prompt lengths (left padding is part of what is tested)"
    text, emb = runner.run("text", batch), runner.run("embeddings", batch)
    assert [r["prediction"] for r in text] == [r["prediction"] for r in emb]
    assert [r["first_token"] for r in text] == [r["first_token"] for r in emb]
    assert len({r["first_token"] for r in text}) > 1, "a degenerate decoder would make this test vacuous"
    assert [r["nll"] for r in text] == [r["nll"] for r in emb]


def test_evaluate_reports_every_mode(trainer: Any) -> None:
    metrics = trainer.evaluate(step=0)
    for mode in ALL_MODES:
        m = metrics[mode]
        for key in ("f1", "em", "first_token_acc", "first_token_top5_acc", "nll", "compression", "seconds",
                    "prediction_diversity", "dominant_share", "dominant_predictions"):
            assert key in m, (mode, key)
        assert 0 <= m["f1"] <= 100 and 0 <= m["first_token_acc"] <= 1
    assert metrics["text_embeddings_agreement"] == 1.0
    assert metrics["text"]["compression"] == 1.0
    assert metrics["latent"]["compression"] > 1.0 and metrics["val_loss"] == metrics["latent"]["nll"]
    assert metrics["adapter"]["compression"] == 1.0  # every context token: no bottleneck
    again = trainer.evaluate(step=1)
    assert again["text"]["cached"] and not again["latent"]["cached"] and not again["adapter"]["cached"]
    lines = trainer.ctx.paths.predictions.read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert {r["mode"] for r in rows} == set(ALL_MODES)
    assert set(rows[0]) == {"step", "id", "question", "gold_answers", "prediction", "mode"}


def test_data_split_is_by_paragraph_and_deterministic(tmp_path: Path) -> None:
    from trainers.latentwire.data import load_squad

    spec = LatentWireSpec.model_validate(base_spec(squad_file(tmp_path / "s.json")))
    train, ev = load_squad(spec.data, 3)
    assert not set(train["context"]) & set(ev["context"])
    assert len(train) == 24 and len(ev) == 6
    assert all(len(a["text"]) > 0 for a in train["answers"])  # unanswerable dropped by default
    train2, ev2 = load_squad(spec.data, 3)
    assert train["id"] == train2["id"] and ev["id"] == ev2["id"]
    spec_all = LatentWireSpec.model_validate(base_spec(tmp_path / "s.json", data={"keep_unanswerable": True,
                                                                                  "train_samples": None}))
    train3, _ = load_squad(spec_all.data, 3)
    assert any(len(a["text"]) == 0 for a in train3["answers"])


# ----------------------------------------------------------------------------- the spec
def test_spec_class_and_defaults(tmp_path: Path) -> None:
    assert spec_class_for("latentwire") is LatentWireSpec
    p = tmp_path / "lw.yaml"
    p.write_text("name: x\ntrainer: latentwire\nmodel: {decoder: meta-llama/Llama-3.1-8B-Instruct}\n"
                 "data: {hub: squad, train_samples: 20000}\ntrain: {epochs: 20}\n")
    [r] = load_spec(p)
    s = r.spec
    assert isinstance(s, LatentWireSpec)
    assert s.model.latent_len == 32 and s.model.anchor == "Answer:" and s.model.adapter == "linear"
    assert s.eval.modes == list(ALL_MODES) and s.eval.temperature == 0
    assert s.model.lora is None and not s.model.gradient_checkpointing and s.model.device_map is None
    assert s.loss.tf_weight == 1.0 and s.loss.kd_tau == 1.0


@pytest.mark.parametrize("model, message", [
    ({}, "give exactly one decoder"),
    ({"decoder": "x", "decoder_from_run": "y"}, "give exactly one decoder"),
    ({"decoder": "some/hub-id", "decoder_config": {"hidden_size": 8}}, "decoder_config only applies"),
    ({"decoder": "x", "encoder_dim": 100, "encoder_heads": 8}, "divisible"),
    ({"decoder": "x", "anchor": "  "}, "anchor"),
    ({"decoder": "x", "max_memory": {"cpu": "1GiB"}}, "max_memory only applies with device_map"),
    ({"decoder": "x", "device_map": "auto", "max_memory": {"gpu0": "1GiB"}}, "expected a GPU index"),
    ({"decoder_config": {"hidden_size": 16}, "chat_template": True}, "has no chat template"),
    ({"decoder": "x", "lora": {"rank": 0}}, "greater than or equal to 1"),
])
def test_model_section_errors(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LatentWireModelSpec.model_validate(model)


def test_decoder_config_alone_means_tiny_random() -> None:
    assert LatentWireModelSpec.model_validate({"decoder_config": {"hidden_size": 16}}).decoder == "tiny-random-llama"


def test_unknown_keys_and_bad_values_are_spec_errors(tmp_path: Path) -> None:
    p = tmp_path / "lw.yaml"
    p.write_text("name: x\ntrainer: latentwire\nmodel: {decoder: d, latent_lenn: 8, adapter: conv}\n"
                 "loss: {kd_weigth: 1.0}\neval: {modes: [latent, pictures]}\ndata: {hub: squad}\n"
                 "train: {max_steps: 5}\n")
    with pytest.raises(UserError) as info:
        load_spec(p)
    text = info.value.render()
    assert "model.latent_lenn" in text and "did you mean 'latent_len'" in text
    assert "model.adapter" in text and "loss.kd_weigth" in text and "eval.modes" in text
    p.write_text("name: x\ntrainer: latentwire\nmodel: {decoder: d}\ntrain: {max_steps: 5}\n")
    with pytest.raises(UserError, match="data: required key is missing"):
        load_spec(p)
    with pytest.raises(UserError, match="data.builtin: unknown key"):  # the lm trainer's corpora are not SQuAD
        load_spec(p, overrides=["data.builtin=arith"])
    with pytest.raises(UserError, match="latentwire reads SQuAD: give exactly one of data.path"):
        load_spec(p, overrides=["data.hub=squad", "data.path=x.json"])
    with pytest.raises(UserError, match="every supervised loss weight of the latent path is 0"):
        load_spec(p, overrides=["data.hub=squad", "loss.tf_weight=0", "loss.first_token_weight=0"])


def test_device_map_needs_one_process_per_node(tmp_path: Path) -> None:
    p = tmp_path / "lw.yaml"
    p.write_text("name: x\ntrainer: latentwire\nmodel: {decoder: d, device_map: auto, max_memory: {0: 70GiB, cpu: 1GiB}}\n"
                 "data: {hub: squad}\ntrain: {max_steps: 5}\nresources: {gpus_per_node: 4}\n")
    with pytest.raises(UserError, match="one process per node"):
        load_spec(p)
    [r] = load_spec(p, overrides=["resources.procs_per_node=1"])
    assert r.spec.model.max_memory == {0: "70GiB", "cpu": "1GiB"}
