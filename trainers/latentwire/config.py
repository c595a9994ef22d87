"""The `latentwire` trainer's spec sections (torch-free: `orch submit` validates with them).

LatentWire feeds a frozen causal LM K continuous vectors through `inputs_embeds`: a small trained
encoder compresses a SQuAD context into `model.latent_len` vectors in the decoder's embedding
space, and the frozen decoder answers the question from them. Besides the control plane's
sections (`train`, `checkpoint`, `resources`, ...) a latentwire spec has:

- `model:` (`LatentWireModelSpec`): which frozen decoder and where it is placed (one device, or
  `device_map` over a node's GPUs), optional LoRA on it (`model.lora`), gradient checkpointing, the
  encoder and adapter, prompt limits and an optional chat template.
- `tokenizer:` (the `lm` trainer's `TokenizerSpec`): for the tiny random decoder, what to train.
- `data:` (`SquadDataSpec`): a SQuAD JSON file or a hub dataset, and the subset sizes.
- `loss:` (`LatentWireLossSpec`): one weight per objective, so a collapse fix is a `--set` away.
- `eval:` (`LatentWireEvalSpec`): which evaluation modes run, decoding, and the collapse alarm.

`TRAINER` is what setup.cfg registers under the entry-point group `orch.trainers`.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, model_validator

from orchestrator.hub.assets import Asset, hub_id
from orchestrator.spec.registry import TrainerInfo
from orchestrator.spec.sections import EvalSpec, Section, Spec
from trainers.lm.config import TokenizerSpec

TINY_RANDOM_DECODER = "tiny-random-llama"  # a Llama built from a config: offline smoke tests, no weights
EVAL_MODES = ("text", "embeddings", "anchor", "adapter", "latent", "token_budget")
EvalMode = Literal["text", "embeddings", "anchor", "adapter", "latent", "token_budget"]


class LoraSpec(Section):
    """LoRA on the frozen decoder (through `peft`): only these low-rank adapters train, beside the encoder."""

    rank: int = Field(16, ge=1, description="r: the rank of each adapter")
    alpha: float = Field(32.0, gt=0, description="scaling: the update is (alpha / rank) * B A x")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapters' input")
    target_modules: Optional[list[str]] = Field(
        None, description="module names to adapt (q_proj, k_proj, v_proj, o_proj, ...); "
                          "null: peft's default for the architecture")


class LatentWireModelSpec(Section):
    """The frozen decoder (exactly one source), the trained encoder + adapter, and the prompt layout."""

    decoder: Optional[str] = Field(
        None, description="frozen decoder: a local folder, a hub id (meta-llama/Llama-3.1-8B-Instruct), "
                          f"or {TINY_RANDOM_DECODER!r} (random weights from decoder_config)")
    decoder_from_run: Optional[str] = Field(
        None, description="a run id, prefix or name whose ckpt/hf-final/model is the decoder (an `lm` run; "
                          "resolved at run time under $ORCH_RESULTS_ROOT)")
    decoder_config: Optional[dict[str, Any]] = Field(
        None, description=f"{TINY_RANDOM_DECODER}: LlamaConfig overrides (hidden_size, num_hidden_layers, ...)")
    latent_len: int = Field(32, ge=1, description="K: latent vectors per context")
    encoder_layers: int = Field(2, ge=1, description="transformer layers over the context's token embeddings")
    encoder_heads: int = Field(8, ge=1)
    encoder_dim: int = Field(512, ge=8, description="the encoder's width (the adapter maps it to the decoder's)")
    encoder_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    adapter: Literal["none", "linear", "mlp"] = Field(
        "linear", description="encoder width -> decoder embedding width; none needs encoder_dim == decoder width")
    max_context_tokens: int = Field(384, ge=1, description="contexts are truncated to this many tokens")
    max_question_tokens: int = Field(64, ge=1)
    max_answer_tokens: int = Field(16, ge=1, description="gold answers are truncated to this (teacher forcing)")
    anchor: str = Field("Answer:", description="text after the question that cues the answer")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="decoder weights: auto = bf16 on GPU, fp32 on CPU")
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    lora: Optional[LoraSpec] = Field(None, description="LoRA adapters on the decoder (null: the decoder stays as is)")
    gradient_checkpointing: bool = Field(
        False, description="recompute the decoder's activations in the backward pass (memory for time)")
    device_map: Optional[Literal["auto", "balanced", "balanced_low_0", "sequential"]] = Field(
        None, description="spread a decoder too big for one device over the node's devices (transformers/accelerate "
                          "device_map); needs one process per node (resources.procs_per_node: 1)")
    max_memory: Optional[dict[Union[int, str], str]] = Field(
        None, description="device_map: the most memory per device, {0: 70GiB, 1: 70GiB, cpu: 200GiB}")
    chat_template: bool = Field(
        False, description="wrap each prompt in the tokenizer's chat template (Instruct decoders): the prompt is the "
                           "user turn, the answer follows the assistant header")

    @model_validator(mode="before")
    @classmethod
    def _config_means_tiny(cls, data: Any) -> Any:
        """`decoder_config:` alone is enough to ask for the tiny random decoder."""
        if isinstance(data, dict) and data.get("decoder_config") is not None and not data.get("decoder") \
                and not data.get("decoder_from_run"):
            data = {**data, "decoder": TINY_RANDOM_DECODER}
        return data

    def assets(self) -> list[Asset]:
        """A hub decoder (its tokenizer comes with it); the tiny random one and a run's are local."""
        repo = hub_id(self.decoder) if self.decoder != TINY_RANDOM_DECODER else None
        return [Asset("model", repo, key="decoder")] if repo else []

    @model_validator(mode="after")
    def _one_decoder(self) -> "LatentWireModelSpec":
        given = [k for k in ("decoder", "decoder_from_run") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one decoder: model.decoder (a folder, a hub id or "
                             f"{TINY_RANDOM_DECODER!r}) or model.decoder_from_run (an lm run)"
                             + (f"; got {', '.join(given)}" if given else ""))
        if self.decoder_config is not None and self.decoder != TINY_RANDOM_DECODER:
            raise ValueError(f"decoder_config only applies to decoder: {TINY_RANDOM_DECODER}")
        if self.encoder_dim % self.encoder_heads:
            raise ValueError(f"encoder_dim ({self.encoder_dim}) must be divisible by encoder_heads ({self.encoder_heads})")
        if not self.anchor.strip():
            raise ValueError("anchor must not be empty (the decoder needs a cue to answer)")
        if self.max_memory is not None and self.device_map is None:
            raise ValueError("max_memory only applies with device_map (auto, balanced, ...)")
        for key in self.max_memory or {}:
            if not (isinstance(key, int) or key.isdigit() or key in ("cpu", "disk", "mps")):
                raise ValueError(f"max_memory key {key!r}: expected a GPU index (0, 1, ...), cpu, disk or mps")
        if self.chat_template and self.decoder == TINY_RANDOM_DECODER:
            raise ValueError(f"chat_template: the {TINY_RANDOM_DECODER} decoder's trained BPE has no chat template "
                             "(use an Instruct decoder's folder or hub id)")
        return self


class LatentWireLossSpec(Section):
    """Weights of the objectives summed into the training loss (0 switches one off)."""

    tf_weight: float = Field(1.0, ge=0, description="teacher-forced cross-entropy over the whole gold answer")
    first_token_weight: float = Field(1.0, ge=0, description="cross-entropy of the first answer token alone")
    kce_weight: float = Field(0.0, ge=0, description="cross-entropy over the first kce_tokens answer tokens")
    kce_tokens: int = Field(4, ge=1)
    kd_weight: float = Field(0.0, ge=0, description="distillation from the same decoder reading the full text prompt")
    kd_tau: float = Field(1.0, gt=0, description="distillation temperature")
    kd_first_k: int = Field(4, ge=1, description="distil the first k answer positions")
    kd_topk: Optional[int] = Field(None, ge=1, description="distil only the teacher's top-k tokens (null: whole vocab)")
    entropy_weight: float = Field(0.0, ge=0, description="reward entropy of the batch's mean first-token distribution")
    adapter_weight: float = Field(0.0, ge=0, description="teacher-forced CE of the uncompressed path (`adapter` mode: "
                                                         "every context token through the encoder and adapter)")

    @model_validator(mode="after")
    def _something(self) -> "LatentWireLossSpec":
        if not any((self.tf_weight, self.first_token_weight, self.kce_weight, self.kd_weight)):
            raise ValueError("every supervised loss weight of the latent path is 0: set tf_weight, first_token_weight, "
                             "kce_weight or kd_weight")
        return self


class SquadDataSpec(Section):
    """SQuAD v1.1/v2.0: a local JSON file (split by paragraph) or a hub dataset (its train/validation)."""

    path: Optional[str] = Field(None, description="a SQuAD-layout JSON file, relative to the spec")
    hub: Optional[str] = Field(None, description="a Hugging Face dataset id: squad, squad_v2")
    config: Optional[str] = Field(None, description="the hub dataset's config")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="path: the share of paragraphs held out")
    train_samples: Optional[int] = Field(None, ge=1, description="the first N of a seeded shuffle (null: all)")
    eval_samples: Optional[int] = Field(None, ge=1)
    keep_unanswerable: bool = Field(False, description="v2.0: keep questions without an answer")

    def assets(self) -> list[Asset]:
        return [Asset("dataset", self.hub, key="hub", config=self.config)] if self.hub else []

    @model_validator(mode="after")
    def _one_source(self) -> "SquadDataSpec":
        given = [k for k in ("path", "hub") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("latentwire reads SQuAD: give exactly one of data.path (a SQuAD JSON file) "
                             "or data.hub (squad, squad_v2)" + (f"; got {', '.join(given)}" if given else ""))
        return self


class LatentWireEvalSpec(EvalSpec):
    """Evaluation modes on one fixed eval subset, greedy decoding by default, and the collapse alarm."""

    batch_size: Optional[int] = Field(None, ge=1, description="default: train.batch_size")
    modes: list[EvalMode] = Field(default_factory=lambda: list(EVAL_MODES),
                                  description="text, embeddings, anchor, adapter, latent, token_budget")
    max_new_tokens: int = Field(12, ge=1)
    temperature: float = Field(0.0, ge=0, description="0: greedy (what F1/EM are reported with)")
    top_k: Optional[int] = Field(200, ge=1, description="sampling (temperature > 0) only")
    top_p: Optional[float] = Field(None, gt=0, le=1, description="sampling (temperature > 0) only")
    collapse_min_diversity: int = Field(4, ge=1, description="fewer unique first tokens per batch than this is collapse")
    collapse_max_share: float = Field(
        0.5, gt=0, le=1, description="one first token predicted for more than this share of the batch is collapse too")
    collapse_patience: int = Field(50, ge=1, description="steps of collapse before the warning")

    @model_validator(mode="after")
    def _modes(self) -> "LatentWireEvalSpec":
        if not self.modes:
            raise ValueError("eval.modes is empty: name at least one of " + ", ".join(EVAL_MODES))
        if len(set(self.modes)) != len(self.modes):
            raise ValueError("eval.modes lists a mode twice")
        return self


class LatentWireSpec(Spec):
    """A `trainer: latentwire` spec."""

    trainer: str = "latentwire"
    model: LatentWireModelSpec
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    data: SquadDataSpec
    loss: LatentWireLossSpec = Field(default_factory=LatentWireLossSpec)
    eval: LatentWireEvalSpec = Field(default_factory=LatentWireEvalSpec)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _placement(self) -> "LatentWireSpec":
        if self.model.device_map and self.resources.processes_per_node > 1:
            raise ValueError(f"model.device_map spreads one decoder over the node's devices, so it needs one process "
                             f"per node; resources asks for {self.resources.processes_per_node}: set "
                             "resources.procs_per_node: 1 (the encoder stays data-parallel over nodes)")
        return self


TRAINER = TrainerInfo(
    name="latentwire",
    spec_class=LatentWireSpec,
    entry="trainers.latentwire.trainer:LatentWireTrainer",
    description="compressed contexts for a frozen LLM: an encoder's latents read through inputs_embeds",
    # per-mode sections (text.f1, latent.first_token_acc, ...) in metrics.json; the rest per log/eval step
    metrics=("loss", "lr", "grad_norm", "tf_loss", "first_loss", "kce_loss", "kd_loss", "entropy", "first_acc",
             "first_acc_top5", "adapter_loss", "val_loss", "prediction_diversity", "dominant_share",
             "dominant_predictions", *EVAL_MODES, "text_embeddings_agreement", "latent_len"),
    paths=("data.path",),
    paths_or_ids=("tokenizer.name_or_path", "model.decoder"),
)
