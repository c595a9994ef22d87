"""The `lm` trainer's spec sections and registry entry (torch-free: `orch submit` validates with them).

`LMSpec` is the control plane's `Spec` plus the sections the language-model trainer reads:
`model:` (any transformers causal-LM type, the TTT model of `trainers.lm.ttt`, or a user's
`PreTrainedModel` class), `tokenizer:`, `data:`
(a local file, a hub dataset or a builtin corpus) and the evaluation extras in `eval:`.
`TRAINER` is what setup.cfg registers under the entry-point group `orch.trainers`.
"""
from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from orchestrator.hub.assets import Asset, hub_id
from orchestrator.plan.shape import ModelShape
from orchestrator.spec.registry import TrainerInfo
from orchestrator.spec.sections import EvalSpec, Section, Spec


BUILTIN_ARCHS = ("gpt2", "llama", "mistral", "ttt", "nanogpt")  # ttt: trainers.lm.ttt (Sun et al. 2024)
_CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_NO_SLIDING_WINDOW = ("gpt2", "llama", "ttt")


@functools.lru_cache(maxsize=1)
def transformers_causal_lm_types() -> tuple[str, ...]:
    """Every model type `AutoModelForCausalLM` builds, read from transformers' own table without importing it.

    `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` is a literal dict in transformers/models/auto/modeling_auto.py;
    importing that module would import torch, which `orch submit` never does, so the file is parsed.
    Empty when transformers is not installed (the control plane alone).
    """
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return ()
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "auto" / "modeling_auto.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
                                                for t in node.targets):
            if isinstance(node.value, ast.Call) and node.value.args and isinstance(node.value.args[0], ast.List):
                names = []
                for elt in node.value.args[0].elts:
                    try:
                        key, _ = ast.literal_eval(elt)
                    except (ValueError, TypeError):
                        continue
                    names.append(str(key))
                return tuple(names)
    return ()


def check_arch(arch: str) -> str:
    """`arch` if it names a model the lm trainer can build; a ValueError with a did-you-mean otherwise."""
    if arch in BUILTIN_ARCHS or arch in transformers_causal_lm_types():
        return arch
    if ":" in arch:
        if not _CLASS_PATH.match(arch):
            raise ValueError(f"{arch!r} is not an import path; a model class is given as 'package.module:Class'")
        top = arch.split(":", 1)[0].split(".", 1)[0]
        if importlib.util.find_spec(top) is None:
            raise ValueError(f"{arch!r}: cannot find the module {top!r} (is it installed or on PYTHONPATH?)")
        return arch
    known = list(BUILTIN_ARCHS) + list(transformers_causal_lm_types())
    close = difflib.get_close_matches(arch, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown model.arch {arch!r}: {hint}expected 'gpt2', 'llama', 'mistral', 'nanogpt', 'ttt', any transformers "
                     f"causal-LM model type ({len(known) - len(BUILTIN_ARCHS)} known, e.g. qwen2, gpt_neox, phi, olmo, "
                     "deepseek_v3) or a PreTrainedModel class as 'package.module:Class'")


class ModelSpec(Section):
    """A causal LM sized from these keys: a transformers model type, `ttt`, or a user's PreTrainedModel class.

    The sizes map onto each config's own key names (d_model -> hidden_size / n_embd / d_model ...);
    `config:` passes further keys straight to the model's config (arch-specific: MoE experts,
    rope settings, the TTT inner loop ...), after the mapped ones, so they win.
    """

    arch: str = Field("gpt2", description="gpt2, llama, mistral, nanogpt, ttt, any transformers causal-LM model type "
                      "(qwen2, gpt_neox, phi, olmo, deepseek_v3 ...) or 'package.module:Class'")
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: Optional[int] = Field(None, ge=1)
    d_model: int = Field(128, ge=1)
    d_ff: Optional[int] = Field(None, ge=1, description="default 4 * d_model")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_seq_len: int = Field(64, ge=2, description="the training window (block size)")
    sliding_window: Optional[int] = Field(None, ge=1, description="sliding-window attention (mistral, qwen2 ...)")
    tie_embeddings: bool = True
    init_from: Optional[str] = Field(None, description="start from a pretrained model (path or hub id)")
    config: dict[str, Any] = Field(default_factory=dict, description="extra keys for the model's config, as named there")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        return check_arch(v)

    def assets(self) -> list[Asset]:
        repo = hub_id(self.init_from)
        return [Asset("model", repo, key="init_from")] if repo else []

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSpec":
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.sliding_window and self.arch in _NO_SLIDING_WINDOW:
            raise ValueError(f"sliding_window: arch {self.arch} has no sliding-window attention (use mistral, qwen2 ...)")
        return self


class TokenizerSpec(Section):
    """char, a byte-level BPE trained on the train split, or a pretrained tokenizer."""

    type: Literal["char", "bpe", "pretrained"] = "char"
    vocab_size: int = Field(50257, ge=16, description="bpe: size of the trained vocabulary")
    name_or_path: Optional[str] = Field(None, description="pretrained: local path or hub id")
    add_eos: bool = False

    def assets(self) -> list[Asset]:
        repo = hub_id(self.name_or_path) if self.type == "pretrained" else None
        return [Asset("tokenizer", repo, key="name_or_path")] if repo else []

    @model_validator(mode="after")
    def _pretrained_needs_name(self) -> "TokenizerSpec":
        if self.type == "pretrained" and not self.name_or_path:
            raise ValueError("type: pretrained needs name_or_path (a local path or a hub id)")
        return self


class DataSpec(Section):
    """Exactly one text source: a local file, a hub dataset, or a corpus shipped with orch."""

    path: Optional[str] = Field(None, description="local text/json/jsonl/parquet file, relative to the spec")
    hub: Optional[str] = Field(None, description="a Hugging Face dataset id, e.g. wikitext")
    config: Optional[str] = Field(None, description="the hub dataset's config, e.g. wikitext-2-raw-v1")
    builtin: Optional[str] = Field(None, description="a corpus shipped with orch (quickstart)")
    text_field: str = "text"
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)

    def assets(self) -> list[Asset]:
        """A hub dataset, every split (the trainer reads train and validation when there is one)."""
        return [Asset("dataset", self.hub, key="hub", config=self.config)] if self.hub else []

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        given = [k for k in ("path", "hub", "builtin") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one data source: path (a local file), hub (a dataset id) or builtin"
                + (f"; got {', '.join(given)}" if given else "")
            )
        return self


class LMEvalSpec(EvalSpec):
    """Validation loss on fixed batches, research diagnostics, and samples at the end."""

    batches: int = Field(20, ge=1)
    batch_size: Optional[int] = Field(None, ge=1, description="default: train.batch_size")
    length_multiples: list[int] = Field(default_factory=list, description="perplexity at k x the window")
    length_windows: Optional[int] = Field(None, ge=1, description="length perplexity over this many windows of "
                                          "k x the window (the first ones); default: the whole validation split")
    effective_rank: bool = False
    diversity: bool = True
    prompts: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(200, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_k: Optional[int] = Field(200, ge=1)
    top_p: Optional[float] = Field(None, gt=0, le=1)

    @field_validator("length_multiples")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v):
            raise ValueError("length multiples must be >= 1")
        return v


class LMSpec(Spec):
    """A `trainer: lm` spec."""

    trainer: str = "lm"
    model: ModelSpec = Field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    data: DataSpec = Field(default_factory=lambda: DataSpec(builtin="arith"))
    eval: LMEvalSpec = Field(default_factory=LMEvalSpec)  # type: ignore[assignment]

    def model_shape(self) -> Optional[ModelShape]:
        """Parameters and sizes for `orch plan` (torch-free, equal to the trainer's own counts);
        None when the vocabulary or a pretrained model's config cannot be read without loading data."""
        return _lm_model_shape(self)


TRAINER = TrainerInfo(
    name="lm",
    spec_class=LMSpec,
    entry="trainers.lm.trainer:LMTrainer",
    description="language-model pretraining: any transformers causal LM, TTT, or a user's PreTrainedModel",
    # its own (the framework adds step_time, tokens_per_sec, train_val_gap, throughput for every trainer);
    # eval.length_multiples adds val_ppl@<k>x (all positions) and val_ppl@<k>x_beyond (positions past the window)
    metrics=("loss", "lr", "grad_norm", "train_loss", "val_loss", "val_ppl", "prediction_diversity", "top_predictions",
             "effective_rank", "effective_rank_ratio", "mfu", "mem_allocated_gb", "mem_peak_gb", "params",
             "tokens_per_param", "tokens_per_non_embedding_param", "chinchilla"),
    paths=("data.path",),
    paths_or_ids=("tokenizer.name_or_path", "model.init_from"),
    prepare="trainers.lm.data:prepare",
)


# ----------------------------------------------------------------------------- planning (`orch plan`)
def _gpt2_counts(v: int, h: int, layers: int, f: int, positions: int, tie: bool) -> tuple[int, int]:
    """(total, non-embedding) of transformers' GPT2LMHeadModel: biases everywhere, learned positions."""
    layer = 2 * 2 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h)
    embedding = v * h + positions * h + (0 if tie else v * h)
    total = v * h + positions * h + layers * layer + 2 * h + (0 if tie else v * h)
    return total, total - embedding


def _llama_counts(v: int, h: int, layers: int, f: int, heads: int, kv_heads: int, head_dim: int,
                  tie: bool) -> tuple[int, int]:
    """(total, non-embedding) of transformers' Llama/Mistral: no biases, RMSNorm, SwiGLU, rotary positions."""
    layer = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h + 3 * h * f + 2 * h
    embedding = v * h + (0 if tie else v * h)
    total = v * h + layers * layer + h + (0 if tie else v * h)
    return total, total - embedding


def _read_json(path: Optional[str]) -> Optional[dict]:
    import json

    try:
        return json.loads(open(path, encoding="utf-8").read()) if path else None
    except (OSError, ValueError):
        return None


def _local_or_cached(name: str, filename: str) -> Optional[str]:
    """A file of a local folder or of a hub repo's cached snapshot (no network)."""
    import os

    if os.path.isdir(name):
        path = os.path.join(name, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, filename)
    return found if isinstance(found, str) else None


def _pretrained_vocab(name: str) -> Optional[int]:
    """A pretrained tokenizer's size (its highest id + 1) from its tokenizer.json, local or cached."""
    data = _read_json(_local_or_cached(name, "tokenizer.json"))
    if not data:
        return None
    ids = list((data.get("model") or {}).get("vocab", {}).values() or [0])
    ids += [t.get("id", 0) for t in data.get("added_tokens", [])]
    return max(i for i in ids if isinstance(i, int)) + 1


def _char_vocab(data: DataSpec) -> Optional[int]:
    """The characters of the whole corpus (the char tokenizer's vocabulary), for builtin and text files."""
    if data.builtin:
        from trainers.lm.corpora import builtin_text

        return len(set(builtin_text(data.builtin)))
    if data.path and data.path.rsplit(".", 1)[-1].lower() in ("txt", "text", "md", "raw", "tokens"):
        try:
            with open(data.path, encoding="utf-8") as fh:
                return len(set(fh.read()))
        except OSError:
            return None
    return None


def _lm_model_shape(spec: "LMSpec") -> Optional[ModelShape]:
    """Parameters and sizes of the model an `lm` spec trains, as the trainer will build it."""
    tok, m, notes = spec.tokenizer, spec.model, []
    if tok.type == "char":
        vocab = _char_vocab(spec.data)
    elif tok.type == "bpe":
        vocab = tok.vocab_size
        notes.append(f"BPE vocabulary at its configured size ({tok.vocab_size:,}); a small corpus may train fewer")
    else:
        vocab = _pretrained_vocab(tok.name_or_path or "")
    if vocab is None:
        return None
    if m.init_from:
        cfg = _read_json(_local_or_cached(m.init_from, "config.json"))
        if not cfg:
            return None
        vocab = max(vocab, cfg.get("vocab_size") or 0)  # the trainer grows a smaller embedding to the tokenizer
        if cfg.get("model_type") == "gpt2":
            h, layers, heads = cfg.get("n_embd", 768), cfg.get("n_layer", 12), cfg.get("n_head", 12)
            f, kv, positions = cfg.get("n_inner") or 4 * h, heads, cfg.get("n_positions", 1024)
            total, non_emb = _gpt2_counts(vocab, h, layers, f, positions, cfg.get("tie_word_embeddings", True))
        elif cfg.get("model_type") in ("llama", "mistral"):
            h, layers, heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
            f, kv = cfg["intermediate_size"], cfg.get("num_key_value_heads") or heads
            total, non_emb = _llama_counts(vocab, h, layers, f, heads, kv, cfg.get("head_dim") or h // heads,
                                           cfg.get("tie_word_embeddings", False))
        else:
            return None
        notes.append(f"dimensions from {m.init_from}'s config.json")
    else:
        h, layers, heads, f = m.d_model, m.n_layer, m.n_head, m.d_ff or 4 * m.d_model
        kv = m.n_kv_head or heads
        if m.arch == "gpt2":
            total, non_emb = _gpt2_counts(vocab, h, layers, f, m.max_seq_len, m.tie_embeddings)
        else:
            total, non_emb = _llama_counts(vocab, h, layers, f, heads, kv, h // heads, m.tie_embeddings)
    return ModelShape(params=total, non_embedding=non_emb, trainable=total, n_layer=layers, d_model=h, n_head=heads,
                      d_ff=f, vocab_size=vocab, seq_len=m.max_seq_len, n_kv_head=kv, dropout=m.dropout,
                      notes=tuple(notes))
