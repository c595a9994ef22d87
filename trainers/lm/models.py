"""Models for the `lm` trainer, built from Hugging Face transformers configs.

`gpt2`, `llama`, `mistral` and every other transformers causal-LM model type (`qwen2`,
`gpt_neox`, `phi`, `olmo`, `deepseek_v3` ...) are the transformers implementations, so
checkpoints save with `save_pretrained` and load anywhere. `nanogpt` is GPT-2's network written
lean (trainers/lm/fastgpt.py: fused QKV, SDPA; transformers' GPT-2 is ~0.85x its speed on CPU),
a registered PreTrainedModel that saves the same way. `ttt` is the
TTT model of `trainers.lm.ttt`; `package.module:Class` is a user's `PreTrainedModel` subclass,
its `config_class` built from the same spec keys. `load_pretrained` loads any of them back.
Also the accounting the scaling experiments need: parameter counts (total and
non-embedding, as Kaplan et al.), FLOPs per token and the device's peak FLOPs for MFU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

# The spec's sizes and the names configs give them, most common first (attribute_map aliases count too).
_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "model_dim"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_key_value_heads": ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size", "inner_dim"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"),
    "head_dim": ("head_dim",),
}
_DROPOUT_KEYS = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                 "hidden_dropout_prob", "attention_probs_dropout_prob")
ORCH_CLASS_KEY = "orch_model_class"  # in config.json of a user-class model: the class `load_pretrained` imports


def _opt(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def max_positions(model_cfg: Any, length_multiples: Sequence[int] | None = None) -> int:
    """Longest sequence a RoPE model must accept: the training window, `max_eval_len`, or window x largest multiple."""
    seq_len = int(_opt(model_cfg, "max_seq_len", 1024))
    longest = max([seq_len, int(_opt(model_cfg, "max_eval_len", 0) or 0)])
    if length_multiples:
        longest = max(longest, seq_len * max(int(m) for m in length_multiples))
    return longest


def constructor_keys(config_class: type) -> set[str]:
    """The keys a transformers config class's constructor names, and its attribute_map aliases."""
    import inspect

    keys = {name for name, p in inspect.signature(config_class.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    keys.update(getattr(config_class, "attribute_map", {}) or {})
    return keys


def accepted_keys(config_class: type) -> set[str]:
    """Every key `model.config` may set: the constructor's, and the attributes a default instance has."""
    keys = constructor_keys(config_class)
    try:
        keys.update(k for k in vars(config_class()) if not k.startswith("_"))
    except Exception:  # a config without defaults for everything: its signature is all we know
        pass
    return keys


def config_kwargs(config_class: type, model_cfg: Any, vocab_size: int, *, eos_id: int | None,
                  length_multiples: Sequence[int] | None) -> dict[str, Any]:
    """The spec's sizes under `config_class`'s own key names, then `model.config` on top (unknown keys: ValueError)."""
    accepted, named = accepted_keys(config_class), constructor_keys(config_class)
    d_model, n_head = int(_opt(model_cfg, "d_model", 128)), int(_opt(model_cfg, "n_head", 4))
    values = {
        "hidden_size": d_model,
        "num_hidden_layers": int(_opt(model_cfg, "n_layer", 4)),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(_opt(model_cfg, "n_kv_head") or n_head),
        "intermediate_size": int(_opt(model_cfg, "d_ff") or 4 * d_model),
        "max_position_embeddings": max_positions(model_cfg, length_multiples),
        "head_dim": d_model // n_head,
    }
    out: dict[str, Any] = {"vocab_size": vocab_size, "bos_token_id": eos_id, "eos_token_id": eos_id,
                           "tie_word_embeddings": bool(_opt(model_cfg, "tie_embeddings", True))}
    aliases = getattr(config_class, "attribute_map", {}) or {}
    for canonical, names in _CONFIG_KEYS.items():
        # constructor keys only: a derived attribute (deepseek_v3's head_dim) is the config's own business
        name = aliases.get(canonical) or next((n for n in names if n in named), None)
        if name is not None:
            out[name] = values[canonical]
    dropout = float(_opt(model_cfg, "dropout", 0.0) or 0.0)
    out.update({k: dropout for k in _DROPOUT_KEYS if k in named})
    window = _opt(model_cfg, "sliding_window")
    if window:
        if "sliding_window" not in named:
            raise ValueError(f"model.sliding_window: {config_class.__name__} has no sliding_window key")
        out["sliding_window"] = int(window)
        if "use_sliding_window" in named:
            out["use_sliding_window"] = True
    out.update(extra_config(config_class, model_cfg, accepted))
    return out


def extra_config(config_class: type, model_cfg: Any, accepted: set[str] | None = None) -> dict[str, Any]:
    """`model.config`, every key checked against `config_class` (a ValueError naming the nearest key)."""
    import difflib

    accepted = accepted if accepted is not None else accepted_keys(config_class)
    extra = dict(_opt(model_cfg, "config") or {})
    unknown = sorted(k for k in extra if k not in accepted)
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, accepted, n=1))
                            else "") for k in unknown]
        raise ValueError(f"model.config: {config_class.__name__} has no key {', '.join(hints)}")
    return extra


def import_model_class(path: str) -> type:
    """The class `package.module:Class` names; it must be a transformers `PreTrainedModel` with a config_class."""
    import importlib

    from transformers import PreTrainedModel

    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model.arch {path!r}: cannot import it ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise ValueError(f"model.arch {path!r} is not a transformers PreTrainedModel subclass")
    if getattr(cls, "config_class", None) is None:
        raise ValueError(f"model.arch {path!r} has no config_class to build its config from")
    return cls


def config_class_for(arch: str) -> type:
    """The config class of a model type, `ttt`, or a user's class path."""
    if ":" in arch:
        return import_model_class(arch).config_class
    if arch == "ttt":
        from trainers.lm.ttt import TTTConfig

        return TTTConfig
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[arch]
    except KeyError:
        raise ValueError(f"unknown model.arch {arch!r}: not a transformers model type") from None


def build_config(
    model_cfg: Any,
    vocab_size: int,
    *,
    eos_id: int | None = None,
    length_multiples: Sequence[int] | None = None,
) -> Any:
    """The config for a spec's `model:` section (embeddings tied by default, as GPT-2)."""
    from transformers import GPT2Config

    arch = _opt(model_cfg, "arch", "gpt2")
    d_model = int(_opt(model_cfg, "d_model", 128))
    n_head = int(_opt(model_cfg, "n_head", 4))
    seq_len = int(_opt(model_cfg, "max_seq_len", 1024))
    if d_model % n_head:
        raise ValueError(f"model.d_model ({d_model}) must be divisible by model.n_head ({n_head})")
    if arch == "gpt2":
        # Learned absolute positions: n_positions is a hard limit, so it is exactly the training window.
        dropout = float(_opt(model_cfg, "dropout", 0.0) or 0.0)
        config = GPT2Config(
            n_positions=seq_len, n_embd=d_model, n_layer=int(_opt(model_cfg, "n_layer", 4)), n_head=n_head,
            n_inner=int(_opt(model_cfg, "d_ff") or 4 * d_model), resid_pdrop=dropout, embd_pdrop=dropout,
            attn_pdrop=dropout, vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
            tie_word_embeddings=bool(_opt(model_cfg, "tie_embeddings", True)),
            # GPT-2's tanh GELU as one fused kernel (the default "gelu_new" is five elementwise ops)
            **{"activation_function": "gelu_pytorch_tanh", **extra_config(GPT2Config, model_cfg)},
        )
    elif arch == "nanogpt":  # gpt2's network, written lean (trainers/lm/fastgpt.py)
        from trainers.lm.fastgpt import NanoGPTConfig

        config = NanoGPTConfig(
            n_positions=seq_len, n_embd=d_model, n_layer=int(_opt(model_cfg, "n_layer", 4)), n_head=n_head,
            n_inner=int(_opt(model_cfg, "d_ff") or 4 * d_model), dropout=float(_opt(model_cfg, "dropout", 0.0) or 0.0),
            vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
            tie_word_embeddings=bool(_opt(model_cfg, "tie_embeddings", True)),
            **extra_config(NanoGPTConfig, model_cfg),
        )
    else:
        config_class = config_class_for(arch)
        config = config_class(**config_kwargs(config_class, model_cfg, vocab_size, eos_id=eos_id,
                                              length_multiples=length_multiples))
        if ":" in arch:
            setattr(config, ORCH_CLASS_KEY, arch)  # saved in config.json: load_pretrained imports it again
    config.train_seq_len = seq_len  # kept in config.json: generation crops its context to this window
    return config


def build_model(
    model_cfg: Any,
    vocab_size: int,
    *,
    eos_id: int | None = None,
    length_multiples: Sequence[int] | None = None,
    attn_implementation: str = "sdpa",
) -> Any:
    """A freshly initialized `transformers.PreTrainedModel`, or `model.init_from` (folder or hub id) loaded.

    `attn_implementation` is asked for where the architecture has it; one without it gets "eager".
    """
    init_from = _opt(model_cfg, "init_from")
    if init_from:
        model = load_pretrained(str(init_from), attn_implementation=attn_implementation)
        if model.get_input_embeddings().num_embeddings < vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model
    config = build_config(model_cfg, vocab_size, eos_id=eos_id, length_multiples=length_multiples)
    arch = _opt(model_cfg, "arch", "gpt2")
    if ":" in arch:
        return import_model_class(arch)(config)
    if arch == "ttt":
        from trainers.lm.ttt import TTTForCausalLM

        return TTTForCausalLM(config)
    if arch == "nanogpt":
        from trainers.lm.fastgpt import NanoGPTForCausalLM

        return NanoGPTForCausalLM(config)
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    except ValueError as exc:  # e.g. "... does not support an attention implementation through torch SDPA"
        if "attention" not in str(exc).lower() and "attn" not in str(exc).lower():
            raise
        return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def load_pretrained(name_or_path: str, **kwargs: Any) -> Any:
    """`from_pretrained` for any model the lm trainer saves: transformers types, `ttt`, user classes."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    import trainers.lm.fastgpt  # noqa: F401  (registers arch nanogpt, model type orch_nanogpt, with the Auto classes)

    config_file = Path(name_or_path) / "config.json"
    saved: dict[str, Any] = {}
    if config_file.is_file():
        saved = json.loads(config_file.read_text(encoding="utf-8"))
    if saved.get(ORCH_CLASS_KEY):
        return import_model_class(saved[ORCH_CLASS_KEY]).from_pretrained(name_or_path)
    if saved.get("model_type") == "ttt":
        from trainers.lm.ttt import TTTForCausalLM

        return TTTForCausalLM.from_pretrained(name_or_path)
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def _embedding_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Token embedding, output embedding (if untied) and learned position embedding weights."""
    found: list[torch.nn.Parameter] = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            found.append(module.weight)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in ("wpe", "embed_positions"):
            found.append(module.weight)
    unique = {id(p): p for p in found}
    return list(unique.values())


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """{"total": ..., "non_embedding": ...}; shared (tied) weights are counted once.

    Non-embedding leaves out token and position embeddings (and an untied output embedding),
    the N of Kaplan et al.'s scaling laws.
    """
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for p in _embedding_params(model))
    return {"total": total, "non_embedding": total - embedding}


def flops_per_token(config: Any, n_non_embedding: int, seq_len: int) -> float:
    """Training FLOPs per token of the model a transformers `config` describes (nanoGPT's MFU estimate).

    6 * (N + d_model * vocab) + 12 * n_layer * d_model * seq_len: N is the non-embedding parameter
    count, d_model * vocab the output projection (the logits matmul, tied to the input embedding or
    not), which N leaves out but every token pays for (nanoGPT counts the tied lm_head in its N),
    and the last term attention's QK^T and AV (PaLM appendix B). Read from the built model's config,
    so a model loaded with `init_from` is counted as it is, not as the spec's defaults say. The
    formula is `orchestrator.plan.arithmetic.flops_per_token`, the one `orch plan` projects with.
    """
    from orchestrator.plan.arithmetic import flops_per_token as formula

    return formula(n_non_embedding, config.num_hidden_layers, config.hidden_size, config.vocab_size, seq_len)


# Dense (no sparsity) peak tensor-core TFLOPS from the vendors' datasheets.
# Order matters: the first substring found in the device name wins ("H100 PCIe" before "H100").
_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("B200", {"bf16": 2250, "fp16": 2250, "tf32": 1100, "fp32": 80}),
    ("H200", {"bf16": 989, "fp16": 989, "tf32": 494, "fp32": 67}),
    ("GH200", {"bf16": 989, "fp16": 989, "tf32": 494, "fp32": 67}),
    ("H100 PCIe", {"bf16": 756, "fp16": 756, "tf32": 378, "fp32": 51}),
    ("H100 NVL", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}),
    ("H100", {"bf16": 989, "fp16": 989, "tf32": 494, "fp32": 67}),
    ("H800", {"bf16": 989, "fp16": 989, "tf32": 494, "fp32": 67}),
    ("A100", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}),
    ("A800", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}),
    ("L40S", {"bf16": 362, "fp16": 362, "tf32": 183, "fp32": 91.6}),
    ("L40", {"bf16": 181, "fp16": 181, "tf32": 90.5, "fp32": 90.5}),
    ("L4", {"bf16": 121, "fp16": 121, "tf32": 60, "fp32": 30.3}),
    ("A6000", {"bf16": 155, "fp16": 155, "tf32": 77, "fp32": 38.7}),
    ("A40", {"bf16": 150, "fp16": 150, "tf32": 75, "fp32": 37.4}),
    ("A30", {"bf16": 165, "fp16": 165, "tf32": 82, "fp32": 10.3}),
    ("A10", {"bf16": 125, "fp16": 125, "tf32": 62.5, "fp32": 31.2}),
    ("V100", {"fp16": 125, "fp32": 15.7}),  # no bf16 tensor cores
    ("T4", {"fp16": 65, "fp32": 8.1}),
]


def peak_flops_for_name(name: str, precision: str) -> float | None:
    """Peak FLOP/s of the GPU called `name` (as `torch.cuda.get_device_name` says) at `precision`."""
    precision = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(precision, precision)
    for key, table in _PEAK_TFLOPS:
        if key in name:
            tflops = table.get(precision)
            return tflops * 1e12 if tflops is not None else None
    return None


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of a CUDA device at `precision` (fp32, tf32, bf16, fp16); None on CPU or unknown GPUs."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    if precision in ("fp32", "float32") and torch.get_float32_matmul_precision() != "highest":
        precision = "tf32"  # fp32 matmuls run on tensor cores when TF32 is allowed
    return peak_flops_for_name(torch.cuda.get_device_name(device), precision)


def supports_length_extrapolation(model: Any) -> tuple[bool, str]:
    """Whether the model can run on sequences longer than it was trained on, and why (not)."""
    config = model.config
    if getattr(config, "model_type", "") == "ttt":
        return True, "ttt is a recurrent model (its state is a learned model updated token by token): no positions"
    if getattr(config, "model_type", "") in ("gpt2", "orch_nanogpt"):
        return False, (
            f"gpt2 uses learned absolute position embeddings for {config.n_positions} positions; "
            f"positions beyond {config.n_positions} have no embedding, so it cannot run longer sequences"
        )
    if getattr(config, "rope_parameters", None) is not None or hasattr(config, "rope_theta"):
        window = getattr(config, "sliding_window", None)
        extra = f", attention limited to a sliding window of {window} tokens" if window else ""
        return True, (
            f"{config.model_type} uses rotary position embeddings (RoPE), defined for any position "
            f"(max_position_embeddings={config.max_position_embeddings}{extra})"
        )
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return False, f"{getattr(config, 'model_type', type(model).__name__)}: position encoding unknown (limit {limit})"


def max_sequence_length(model: Any) -> int | None:
    """The longest input the model accepts: gpt2's n_positions; None (no hard limit) for RoPE models."""
    ok, _ = supports_length_extrapolation(model)
    if ok:
        return None
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
