"""`orch plan`'s arithmetic: parameter counts equal the trainer's own, memory against hand-computed cases."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.plan.arithmetic import arithmetic, chinchilla_optimal
from orchestrator.plan.memory import estimate, keep_global_batch
from orchestrator.plan.shape import ModelShape
from orchestrator.spec.schema import load_spec

REPO = Path(__file__).resolve().parents[2]


def _trainer_counts(spec) -> dict[str, int]:
    """What the lm trainer itself counts and writes to metrics.json (`params`), on the built model."""
    import torch

    from trainers.lm.models import build_model, param_counts

    with torch.device("meta"):  # the same modules, no memory for 20M parameters
        model = build_model(spec.model, spec.model_shape().vocab_size)
    return param_counts(model)


def test_wikitext103_scaling_counts_equal_the_trainers_for_every_point() -> None:
    points = load_spec(REPO / "jobs" / "wikitext103_scaling.yaml", [], None)
    assert len(points) == 9
    totals = []
    for point in points:
        spec = point.spec
        shape = spec.model_shape()
        assert _trainer_counts(spec) == {"total": shape.params, "non_embedding": shape.non_embedding}, point.sweep_point
        numbers = arithmetic(spec, shape)
        assert numbers.tokens == numbers.steps * 32 * 256  # batch 32 x window 256, one process
        assert numbers.tokens_per_param == pytest.approx(numbers.tokens / shape.params)  # as the trainer's metrics.json
        totals.append(shape.params)
    # the figures the spec's comment states
    assert min(totals) == 814_800 and max(totals) == 19_249_920  # 0.81M to 19.25M


@pytest.mark.parametrize("model", [
    {"arch": "gpt2", "n_layer": 3, "n_head": 4, "d_model": 64, "max_seq_len": 48, "tie_embeddings": False},
    {"arch": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64, "d_ff": 96, "max_seq_len": 32},
    {"arch": "llama", "n_layer": 2, "n_head": 4, "d_model": 64, "max_seq_len": 32, "tie_embeddings": False},
    {"arch": "mistral", "n_layer": 2, "n_head": 4, "n_kv_head": 1, "d_model": 32, "max_seq_len": 32,
     "sliding_window": 16},
])
def test_other_architectures_count_as_the_trainer(model: dict, tmp_path: Path) -> None:
    from orchestrator.spec.schema import spec_from_data

    spec = spec_from_data({"name": "x", "trainer": "lm", "model": model, "tokenizer": {"type": "bpe", "vocab_size": 500},
                           "data": {"builtin": "arith"}, "train": {"max_steps": 10}}, "test")
    shape = spec.model_shape()
    assert _trainer_counts(spec) == {"total": shape.params, "non_embedding": shape.non_embedding}


def test_char_vocabulary_of_the_quickstart_matches_the_trainer_log() -> None:
    (point,) = load_spec(REPO / "jobs" / "quickstart.yaml", [], None)
    shape = point.spec.model_shape()
    # the quickstart's training.log: "model gpt2: 103,040 parameters (100,096 non-embedding), vocab 14"
    assert (shape.params, shape.non_embedding, shape.vocab_size) == (103_040, 100_096, 14)


GPT2_124M = ModelShape(params=124_439_808, non_embedding=85_056_000, trainable=124_439_808, n_layer=12, d_model=768,
                       n_head=12, d_ff=3072, vocab_size=50257, seq_len=1024)


def test_memory_of_gpt2_124m_in_bf16_with_adamw_by_hand() -> None:
    est = estimate(GPT2_124M, batch_size=12, precision="bf16")
    p = 124_439_808
    assert est.weights == 4 * p          # fp32 parameters under autocast: 0.498 GB
    assert est.gradients == 4 * p        # fp32 gradients: 0.498 GB
    assert est.optimizer == 8 * p        # AdamW exp_avg + exp_avg_sq: 0.996 GB
    assert est.static == pytest.approx(1.991e9, rel=1e-3)
    # per token: 12 layers x 2 bytes x (6*768 + 2*768 + 2*3072) = 12 x 24,576; + 2 x 2*768 (embedding, final
    # norm) + (2 + 8) x 50,257 (bf16 logits, fp32 log-softmax and its gradient) = 294,912 + 3,072 + 502,570
    per_token = 12 * 2 * (6 * 768 + 2 * 768 + 2 * 3072) + 2 * 2 * 768 + 10 * 50257
    assert per_token == 800_554
    assert est.activations_per_sample == 1024 * per_token  # 0.820 GB per sample of 1024 tokens
    assert est.activations == 12 * 1024 * per_token        # 9.84 GB at batch 12
    assert est.total == pytest.approx(11.83e9, rel=1e-3)
    # an 80 GB device at 90%: (72e9 - 1.991e9) // 0.8198e9 = 85 samples
    assert est.max_batch(80e9) == 85


def test_memory_fp32_dropout_unfused_attention_and_frozen_weights() -> None:
    shape = ModelShape(params=1000, non_embedding=800, trainable=600, n_layer=2, d_model=8, n_head=2, d_ff=32,
                       vocab_size=10, seq_len=4, frozen_bytes_per_param=2)
    est = estimate(shape, batch_size=3, precision="fp32", dropout=True, fused_attention=False)
    assert (est.weights, est.gradients, est.optimizer) == (4 * 600 + 2 * 400, 4 * 600, 8 * 600)
    layer = 4 * (6 * 8 + 2 * 8 + 2 * 32) + 2 * 8 + (4 + 1) * 2 * 4  # + dropout masks + attention probabilities
    assert est.activations == 3 * 4 * (2 * layer + 4 * 2 * 8 + 12 * 10)


def test_keep_global_batch_and_chinchilla_optimum() -> None:
    assert keep_global_batch(32, 1, 12) == (8, 4)   # 32 = 8 x 4: the fewest accumulation steps with <= 12
    assert keep_global_batch(12, 2, 24) == (24, 1)
    assert keep_global_batch(7, 1, 3) == (1, 7)     # a prime global batch: micro-batches of 1
    assert keep_global_batch(8, 1, 0) is None
    n, d = chinchilla_optimal(5.76e23)              # Chinchilla's own budget: ~70B parameters, 1.4T tokens
    assert n == pytest.approx(69.3e9, rel=0.01) and d == pytest.approx(1.386e12, rel=0.01)
