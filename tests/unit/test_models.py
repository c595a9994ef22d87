"""Models from transformers configs: sizes, parameter counts, FLOPs, position limits, sliding windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainers.lm.config import ModelSpec
from trainers.lm.models import (
    build_config,
    build_model,
    flops_per_token,
    param_counts,
    peak_flops,
    peak_flops_for_name,
    supports_length_extrapolation,
)

V = 50


def test_gpt2_param_counts_match_a_hand_computation():
    L, d, ff, P = 3, 32, 80, 16
    model = build_model(ModelSpec(arch="gpt2", n_layer=L, n_head=4, d_model=d, d_ff=ff, max_seq_len=P), V)
    per_layer = (
        2 * d  # ln_1
        + d * 3 * d + 3 * d  # c_attn (q, k, v with biases)
        + d * d + d  # attention c_proj
        + 2 * d  # ln_2
        + d * ff + ff  # mlp c_fc
        + ff * d + d  # mlp c_proj
    )
    non_embedding = L * per_layer + 2 * d  # + ln_f
    assert param_counts(model) == {"total": non_embedding + V * d + P * d, "non_embedding": non_embedding}


def test_llama_param_counts_with_grouped_query_attention():
    L, d, ff, n_head, n_kv = 2, 32, 64, 4, 2
    model = build_model(ModelSpec(arch="llama", n_layer=L, n_head=n_head, n_kv_head=n_kv, d_model=d, d_ff=ff), V)
    kv_dim = d // n_head * n_kv
    per_layer = d * d + 2 * d * kv_dim + d * d + 3 * d * ff + 2 * d  # q, k, v, o; gate, up, down; 2 RMSNorms
    non_embedding = L * per_layer + d  # + final norm; RoPE has no parameters
    assert model.config.num_key_value_heads == n_kv
    assert param_counts(model) == {"total": non_embedding + V * d, "non_embedding": non_embedding}


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral"])
def test_embeddings_are_tied_sdpa_is_used_and_d_ff_defaults_to_4d(arch: str):
    model = build_model(ModelSpec(arch=arch, n_layer=1, n_head=2, d_model=16, max_seq_len=8), V)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config._attn_implementation == "sdpa"
    ff = model.config.n_inner if arch == "gpt2" else model.config.intermediate_size
    assert ff == 64
    logits = model(input_ids=torch.randint(0, V, (2, 8))).logits
    assert logits.shape == (2, 8, V)


def test_untied_embeddings_count_the_output_matrix_as_embedding():
    spec = ModelSpec(arch="llama", n_layer=1, n_head=2, d_model=16, tie_embeddings=False)
    counts = param_counts(build_model(spec, V))
    tied = param_counts(build_model(spec.model_copy(update={"tie_embeddings": True}), V))
    assert counts["total"] == tied["total"] + V * 16
    assert counts["non_embedding"] == tied["non_embedding"]


def test_rope_models_get_positions_for_the_longest_evaluation():
    spec = ModelSpec(arch="llama", n_layer=1, n_head=2, d_model=16, max_seq_len=64)
    assert build_model(spec, V, length_multiples=[1, 2, 10, 20]).config.max_position_embeddings == 64 * 20
    assert build_model(spec, V).config.max_position_embeddings == 64
    gpt2 = build_model(ModelSpec(arch="gpt2", n_layer=1, n_head=2, d_model=16, max_seq_len=64), V, length_multiples=[20])
    assert gpt2.config.n_positions == 64  # learned positions: more would be untrained rows


def test_length_extrapolation_support_is_explained():
    gpt2 = build_model(ModelSpec(arch="gpt2", n_layer=1, n_head=2, d_model=16, max_seq_len=32), V)
    ok, why = supports_length_extrapolation(gpt2)
    assert not ok and "learned absolute position embeddings" in why and "32" in why
    llama = build_model(ModelSpec(arch="llama", n_layer=1, n_head=2, d_model=16, max_seq_len=32), V)
    ok, why = supports_length_extrapolation(llama)
    assert ok and "RoPE" in why
    llama(input_ids=torch.randint(0, V, (1, 200)))  # runs far beyond the window


def _logits_change_at(model: torch.nn.Module, position: int) -> bool:
    """Does changing token 0 change the logits at `position`?"""
    torch.manual_seed(0)
    x = torch.randint(0, V, (1, 24))
    x2 = x.clone()
    x2[0, 0] = (x[0, 0] + 1) % V
    with torch.no_grad():
        a, b = model(input_ids=x).logits[0, position], model(input_ids=x2).logits[0, position]
    return not torch.allclose(a, b, atol=1e-6)


def test_mistral_sliding_window_limits_what_a_position_sees():
    kwargs = dict(n_layer=2, n_head=2, d_model=16, max_seq_len=24)
    mistral = build_model(ModelSpec(arch="mistral", sliding_window=4, **kwargs), V).eval()
    llama = build_model(ModelSpec(arch="llama", **kwargs), V).eval()
    # Two layers of a 4-token window reach back at most 2 * 3 = 6 positions.
    assert _logits_change_at(mistral, 5) and not _logits_change_at(mistral, 20)
    assert _logits_change_at(llama, 20)


def test_init_from_loads_a_saved_model(tmp_path: Path):
    src = build_model(ModelSpec(arch="llama", n_layer=1, n_head=2, d_model=16), V)
    src.save_pretrained(tmp_path / "pretrained")
    loaded = build_model(ModelSpec(arch="gpt2", init_from=str(tmp_path / "pretrained")), V)
    assert type(loaded) is type(src)
    for (name, a), (_, b) in zip(src.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_flops_per_token_counts_the_logits_matmul_and_attention():
    spec = ModelSpec(arch="gpt2", n_layer=4, n_head=4, d_model=128, max_seq_len=64)
    config = build_config(spec, V)
    assert flops_per_token(config, 800_000, 64) == 6 * (800_000 + 128 * V) + 12 * 4 * 128 * 64
    # nanoGPT's estimate for GPT-2 124M: N = all parameters but the position embedding (the tied
    # lm_head counts), 6N + 12 * L * d * T
    gpt2 = build_model(ModelSpec(arch="gpt2", n_layer=12, n_head=12, d_model=768, max_seq_len=1024), 50257)
    n = param_counts(gpt2)
    nanogpt_n = n["total"] - gpt2.transformer.wpe.weight.numel()
    assert flops_per_token(gpt2.config, n["non_embedding"], 1024) == 6 * nanogpt_n + 12 * 12 * 768 * 1024


def test_peak_flops_is_none_on_cpu():
    assert peak_flops(torch.device("cpu"), "bf16") is None
    assert peak_flops(torch.device("cpu"), "fp32") is None


def test_peak_flops_table_by_device_name():
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops_for_name("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops_for_name("NVIDIA H200", "bf16") == 989e12
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
    assert peak_flops_for_name("NVIDIA L40S", "fp16") == 362e12
    assert peak_flops_for_name("Tesla V100-SXM2-32GB", "bf16") is None  # no bf16 tensor cores
    assert peak_flops_for_name("Some Future GPU", "bf16") is None


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="unknown model.arch"):
        build_model({"arch": "rwkv", "n_head": 2, "d_model": 16}, V)
