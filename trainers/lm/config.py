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
)
