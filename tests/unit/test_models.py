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
        build_model({"arch": "gpt5x", "n_head": 2, "d_model": 16}, V)
    with pytest.raises(ValueError, match="did you mean 'qwen2'"):
        ModelSpec(arch="qwen22")


def test_an_arch_without_sdpa_falls_back_to_eager_attention():
    model = build_model({"arch": "rwkv", "n_layer": 2, "n_head": 2, "d_model": 16, "max_seq_len": 8}, V)
    assert model.config.model_type == "rwkv" and model(input_ids=torch.randint(0, V, (1, 8))).logits.shape == (1, 8, V)


@pytest.mark.parametrize("arch", ["qwen2", "gpt_neox", "phi", "olmo", "qwen3"])
def test_transformers_model_types_are_sized_from_the_spec(arch: str):
    spec = ModelSpec(arch=arch, n_layer=2, n_head=4, n_kv_head=2 if arch != "gpt_neox" else None, d_model=32,
                     d_ff=48, max_seq_len=16, dropout=0.1)
    model = build_model(spec, V, eos_id=3, length_multiples=[1, 4])
    c = model.config
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == \
        (arch, 32, 2, 4, 48)
    assert c.max_position_embeddings == 64 and c.train_seq_len == 16 and c.eos_token_id == 3
    assert c.attention_dropout == 0.1
    if arch != "gpt_neox":
        assert c.num_key_value_heads == 2
    if arch == "qwen3":  # its own default head_dim (128) would not follow d_model / n_head
        assert c.head_dim == 8
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model(input_ids=torch.randint(0, V, (2, 16))).logits.shape == (2, 16, V)
    ok, why = supports_length_extrapolation(model)
    assert ok and "RoPE" in why


def test_model_config_passes_arch_specific_keys_and_rejects_unknown_ones():
    spec = ModelSpec(arch="deepseek_v3", n_layer=2, n_head=2, d_model=32, d_ff=64, max_seq_len=16,
                     config={"n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
                             "moe_intermediate_size": 16, "first_k_dense_replace": 1, "q_lora_rank": 16,
                             "kv_lora_rank": 8, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 8})
    model = build_model(spec, V)
    assert model.config.n_routed_experts == 4 and model.config.kv_lora_rank == 8
    assert len(model.model.layers[1].mlp.experts.gate_up_proj) == 4  # layer 1 is a mixture of 4 experts
    assert model(input_ids=torch.randint(0, V, (1, 16))).logits.shape == (1, 16, V)
    with pytest.raises(ValueError, match=r"Qwen2Config has no key 'rope_thetta' \(did you mean 'rope_theta'\?\)|"
                                         r"Qwen2Config has no key 'rope_thetta'"):
        build_model(ModelSpec(arch="qwen2", n_head=2, d_model=16, config={"rope_thetta": 1e4}), V)


def test_sliding_window_goes_to_any_config_that_has_one():
    model = build_model(ModelSpec(arch="qwen2", n_head=2, d_model=16, max_seq_len=16, sliding_window=4), V)
    assert model.config.sliding_window == 4 and model.config.use_sliding_window is True
    with pytest.raises(ValueError, match="PhiConfig has no sliding_window"):
        build_model(ModelSpec(arch="phi", n_head=2, d_model=16, sliding_window=4), V)
    with pytest.raises(ValueError, match="arch llama has no sliding-window attention"):
        ModelSpec(arch="llama", sliding_window=4)


def test_a_user_model_class_is_built_from_its_config_class_and_loads_back(tmp_path: Path):
    from trainers.lm.models import load_pretrained

    spec = ModelSpec(arch="tests.fixtures.user_model:TinyCausalLM", n_layer=2, n_head=2, d_model=16, d_ff=24,
                     max_seq_len=8, config={"activation": "relu"})
    model = build_model(spec, V)
    assert type(model).__name__ == "TinyCausalLM"
    assert (model.config.dim, model.config.layers, model.config.ffn, model.config.activation) == (16, 2, 24, "relu")
    ids = torch.randint(0, V, (2, 8))
    model.save_pretrained(tmp_path / "m")
    loaded = load_pretrained(str(tmp_path / "m"))
    assert type(loaded).__name__ == "TinyCausalLM"
    assert torch.equal(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    with pytest.raises(ValueError, match="not a transformers PreTrainedModel"):
        build_model(ModelSpec(arch="tests.fixtures.user_model:not_a_model"), V)


def test_ttt_is_built_from_the_spec():
    spec = ModelSpec(arch="ttt", n_layer=2, n_head=2, d_model=16, d_ff=32, max_seq_len=16,
                     config={"mini_batch_size": 8, "ttt_layer_type": "mlp"})
    model = build_model(spec, V, length_multiples=[20])
    c = model.config
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.mini_batch_size) == \
        ("ttt", 16, 2, 32, 8)
    assert supports_length_extrapolation(model)[0]
    assert model(input_ids=torch.randint(0, V, (1, 320))).logits.shape == (1, 320, V)  # 20x the window


def test_gpt2_takes_model_config_keys_too():
    model = build_model(ModelSpec(arch="gpt2", n_head=2, d_model=16, max_seq_len=8,
                                  config={"activation_function": "relu"}), V)
    assert model.config.activation_function == "relu"
    with pytest.raises(ValueError, match="GPT2Config has no key 'activation_fn'"):
        build_model(ModelSpec(arch="gpt2", n_head=2, d_model=16, config={"activation_fn": "relu"}), V)
