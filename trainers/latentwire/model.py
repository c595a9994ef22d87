"""The `latentwire` model: a frozen decoder, the trained encoder + adapter, and prompt assembly.

- `load_decoder`: any `AutoModelForCausalLM` (a folder, a hub id, the `ckpt/hf-final/model` of an
  `lm` run, or a tiny random Llama built from a config), frozen: no gradients, its dropout off, bf16
  on GPU; on one device, or spread over the node's devices with `model.device_map` (+ `max_memory`).
- `attach_lora`: `peft` LoRA adapters on the frozen decoder (`model.lora`); the base weights stay as
  they are, only the adapters train. `TrainedParts` holds what trains (the encoder + adapter and the
  LoRA weights, the same Parameter objects the decoder uses), so one state dict checkpoints both.
- `LatentEncoder`: a small transformer over the context's token embeddings (the decoder's own
  embedding table, frozen), K learned queries that read it (Perceiver-style cross-attention), and
  an adapter into the decoder's embedding width. The output is rescaled to the RMS of the decoder's
  input embeddings: a frozen LM only understands inputs at the scale it was trained on. Without
  the queries (`uncompressed`), every context position goes through the same norm and adapter:
  the `adapter` evaluation mode, one vector per context token.
- `assemble` / `answer_logits` / `generate`: prompts are lists of embedding segments per example
  ([bos] + latents + question + anchor, or the text prompt's own embeddings), padded into one batch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.latentwire.config import TINY_RANDOM_DECODER

# A Llama small enough to train a smoke run on 2 CPU cores in seconds (overridden by decoder_config).
TINY_LLAMA = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


# ----------------------------------------------------------------------------- the frozen decoder
def decoder_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPU (how an 8B model fits 4 copies on 4 GPUs), fp32 on CPU (bf16 matmuls are slow there)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def freeze(decoder: nn.Module) -> nn.Module:
    """No gradients to the decoder's weights and no dropout: it is a fixed function of its inputs.

    Dropout is switched off in the modules themselves (nn.Dropout and the attention's own rate), not
    only by eval mode: training puts the decoder in train mode, which gradient checkpointing and
    LoRA's dropout need, and the frozen part must still compute the same function then.
    """
    decoder.requires_grad_(False)
    for module in decoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return decoder.eval()


def results_root(run_dir: Path) -> Path:
    """Where other runs live: $ORCH_RESULTS_ROOT (set by the job wrapper), else the run dir's grandparent."""
    root = os.environ.get("ORCH_RESULTS_ROOT")
    return Path(root) if root else Path(run_dir).resolve().parent.parent


def decoder_from_run(ref: str, run_dir: Path) -> Path:
    """The `ckpt/hf-final/model` folder of a run given by id, unique prefix, folder, or name (newest COMPLETED)."""
    from orchestrator.errors import UserError
    from orchestrator.record.tree import ResultsRoot

    root = ResultsRoot(results_root(run_dir))
    candidates = sorted((r for r in root.iter_runs() if r.name == ref and str(r.state) == "COMPLETED"),
                        key=lambda r: r.run_id)
    if candidates:
        run = candidates[-1]
    else:
        try:
            run = root.resolve(ref)
        except UserError as exc:
            raise FileNotFoundError(f"model.decoder_from_run {ref!r}: {exc} (no COMPLETED run of that name either)") from None
    folder = run.paths.ckpt / "hf-final" / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.decoder_from_run {ref!r}: {folder} holds no HF model "
                                f"(run {run.run_id} is {run.state}; it must finish with checkpoint.hf_format: true)")
    return folder


def build_tiny_decoder(tokenizer: Any, overrides: Optional[dict[str, Any]], seed: int) -> nn.Module:
    """A randomly initialised Llama sized by `TINY_LLAMA` + `model.decoder_config`, the same for a given seed."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from trainers.latentwire.data import special_ids

    bos, eos = special_ids(tokenizer)
    config = LlamaConfig(**{**TINY_LLAMA, "vocab_size": tokenizer.vocab_size, "bos_token_id": bos,
                            "eos_token_id": eos, "pad_token_id": eos, **(overrides or {})})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def load_decoder(model_cfg: Any, tokenizer_cfg: Any, run_dir: Path, corpus: Any, seed: int, is_main: bool,
                 device: torch.device, spec_dir: Optional[Path] = None) -> tuple[nn.Module, Any, str]:
    """(frozen decoder on `device` or placed by `model.device_map`, its `TextTokenizer`, where it came from).

    A tiny random decoder and its tokenizer (trained on `corpus()`, the training text) are saved in
    `<run>/decoder/` by the main process, which the others (and a resumed attempt) load: every
    process and attempt sees the very same weights. Call it under `accelerator.main_process_first()`.
    """
    from transformers import AutoModelForCausalLM

    from trainers.lm.tokenization import build_tokenizer, load_pretrained, load_tokenizer

    dtype = decoder_dtype(model_cfg.dtype, device)
    kwargs: dict[str, Any] = dict(dtype=dtype, attn_implementation=model_cfg.attn_implementation)
    if model_cfg.device_map:  # accelerate places the layers over the node's devices (within max_memory)
        kwargs["device_map"] = model_cfg.device_map
        if model_cfg.max_memory:
            kwargs["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in model_cfg.max_memory.items()}
    if model_cfg.decoder_from_run:
        folder = decoder_from_run(model_cfg.decoder_from_run, run_dir)
        source, tokenizer = f"run {model_cfg.decoder_from_run} ({folder})", load_tokenizer(folder)
        from trainers.lm.models import load_pretrained as load_lm_model  # any arch an lm run saves (ttt, user classes)

        decoder = load_lm_model(str(folder), **kwargs)
    elif model_cfg.decoder == TINY_RANDOM_DECODER:
        folder = Path(run_dir) / "decoder"
        if not (folder / "config.json").is_file():
            if not is_main:
                raise RuntimeError(f"{folder} is missing: the main process builds it first (main_process_first)")
            tokenizer = build_tokenizer(tokenizer_cfg, corpus())
            decoder = build_tiny_decoder(tokenizer, model_cfg.decoder_config, seed)
            decoder.save_pretrained(str(folder))
            tokenizer.save(folder)
        source, tokenizer = f"{TINY_RANDOM_DECODER} ({folder})", load_tokenizer(folder)
        decoder = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    else:
        name = model_cfg.decoder
        if spec_dir is not None and not Path(name).is_absolute() and (spec_dir / name).is_dir():
            name = str((spec_dir / name).resolve())  # a folder relative to the spec file
        source, tokenizer = name, load_pretrained(name)
        decoder = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    if not model_cfg.device_map:
        decoder = decoder.to(device)
    if model_cfg.gradient_checkpointing:  # active in train mode only (the training step's forward)
        decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return freeze(decoder), tokenizer, source


def attach_lora(decoder: nn.Module, lora_cfg: Any) -> Any:
    """The `peft` model holding LoRA adapters injected into `decoder` (whose own weights stay frozen).

    `peft_model.get_base_model()` is `decoder` itself with the adapters in its layers, so calling the
    decoder applies them; `peft_model.disable_adapter()` switches them off (the frozen baseline).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("model.lora needs the peft package: pip install 'orch[lora]'") from None

    config = LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=lora_cfg.target_modules, bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(decoder, config)
    except ValueError as exc:  # peft: no default target modules for this architecture, or a name not found
        raise ValueError(f"model.lora: {exc}") from None


def lora_parameters(peft_model: Any) -> dict[str, nn.Parameter]:
    """The trainable LoRA weights by name (peft marks only those as requiring gradients)."""
    return {name: p for name, p in peft_model.named_parameters() if p.requires_grad}


def input_device(decoder: nn.Module) -> torch.device:
    """Where the decoder's input embeddings live (the first device of a device_map)."""
    return decoder.get_input_embeddings().weight.device


def embed_rms(decoder: nn.Module) -> float:
    """RMS of the decoder's input embedding vectors: the scale latents are calibrated to."""
    w = decoder.get_input_embeddings().weight.detach().float()
    return float(w.pow(2).mean(dim=-1).sqrt().mean())


# ----------------------------------------------------------------------------- the trained part
class TrainedParts(nn.Module):
    """Everything that trains: the encoder + adapter, and the decoder's LoRA weights when there are any.

    `lora` registers the very Parameter objects peft put into the decoder (names with "." as "/"),
    so the optimizer, DDP's gradient averaging, gradient clipping and the checkpoints (model/ holds
    this state dict) cover them with the encoder; loading a checkpoint writes them into the decoder.
    """

    def __init__(self, encoder: nn.Module, lora: Optional[dict[str, nn.Parameter]] = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.lora = nn.ParameterDict({name.replace(".", "/"): p for name, p in (lora or {}).items()})

    def forward(self, context_embeds: torch.Tensor, context_mask: torch.Tensor, uncompressed: bool = False) -> Any:
        return self.encoder(context_embeds, context_mask, uncompressed)


def build_adapter(kind: str, d_in: int, d_out: int) -> nn.Module:
    """Encoder width -> decoder embedding width."""
    if kind == "none":
        if d_in != d_out:
            raise ValueError(f"model.adapter: none needs model.encoder_dim == the decoder's width ({d_out}); got {d_in}")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, 4 * d_in), nn.GELU(), nn.Linear(4 * d_in, d_out))


class LatentEncoder(nn.Module):
    """Context token embeddings (B, T, d_decoder) -> K latent vectors (B, K, d_decoder)."""

    def __init__(self, d_decoder: int, model_cfg: Any, target_rms: float) -> None:
        super().__init__()
        dim, heads, drop = model_cfg.encoder_dim, model_cfg.encoder_heads, model_cfg.encoder_dropout
        self.proj_in = nn.Linear(d_decoder, dim)
        self.pos = nn.Embedding(model_cfg.max_context_tokens, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, drop, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.context = nn.TransformerEncoder(layer, model_cfg.encoder_layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(model_cfg.latent_len, dim) * dim ** -0.5)
        self.reader = nn.TransformerDecoderLayer(dim, heads, 4 * dim, drop, activation="gelu", batch_first=True,
                                                 norm_first=True)  # queries: self-attention, then read the context
        self.norm = nn.LayerNorm(dim)
        self.adapter = build_adapter(model_cfg.adapter, dim, d_decoder)
        self.register_buffer("target_rms", torch.tensor(float(target_rms)))
        self.gain = nn.Parameter(torch.ones(()))

    def _to_decoder(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder states -> decoder input vectors: norm, adapter, rescaled to the decoder's embedding RMS."""
        z = self.adapter(self.norm(h))
        z = z * torch.rsqrt(z.float().pow(2).mean(dim=-1, keepdim=True) + 1e-6).to(z.dtype)
        return z * (self.target_rms * self.gain)

    def forward(self, context_embeds: torch.Tensor, context_mask: torch.Tensor, uncompressed: bool = False) -> Any:
        """K latents (B, K, d); with `uncompressed`, also one vector per context position (B, T, d).

        `context_mask`: True at real tokens (right padding). The uncompressed vectors skip the K
        queries: each context position's encoder state goes through the same norm and adapter.
        """
        x = context_embeds.to(self.proj_in.weight.dtype)
        positions = torch.arange(x.size(1), device=x.device)
        h = self.proj_in(x) + self.pos(positions)
        pad = ~context_mask
        h = self.context(h, src_key_padding_mask=pad)
        q = self.queries.unsqueeze(0).expand(x.size(0), -1, -1)
        z = self._to_decoder(self.reader(q, h, memory_key_padding_mask=pad))
        return (z, self._to_decoder(h)) if uncompressed else z


# ----------------------------------------------------------------------------- prompts as embeddings
def embed_ids(decoder: nn.Module, ids: Sequence[int], device: torch.device) -> torch.Tensor:
    """(n, d) input embeddings of token ids (the decoder's own table: exactly what input_ids would give).

    They are computed where the table is (`device` unless a device_map put it elsewhere).
    """
    table = decoder.get_input_embeddings()
    return table(torch.tensor(list(ids), dtype=torch.long, device=table.weight.device))


def pad_ids(rows: Sequence[Sequence[int]], pad: int, device: torch.device, left: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of right- (or left-) padded id lists."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.bool)
    for i, r in enumerate(rows):
        sl = slice(n - len(r), n) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(list(r), dtype=torch.long)
        mask[i, sl] = True
    return ids.to(device), mask.to(device)


def assemble(segments: Sequence[Sequence[torch.Tensor]], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example a list of (n_i, d) embedding segments -> (embeds (B, L, d), mask (B, L)), padded."""
    rows = [torch.cat(list(s), dim=0) for s in segments]
    n, d = max(r.size(0) for r in rows), rows[0].size(1)
    embeds = rows[0].new_zeros((len(rows), n, d))
    mask = torch.zeros((len(rows), n), dtype=torch.bool, device=rows[0].device)
    for i, r in enumerate(rows):
        sl = slice(n - r.size(0), n) if left else slice(0, r.size(0))
        embeds[i, sl] = r
        mask[i, sl] = True
    return embeds, mask


def answer_logits(decoder: nn.Module, prefixes: Sequence[Sequence[torch.Tensor]], answers: Sequence[Sequence[int]]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing: (logits (B, A, V) predicting each answer token, targets (B, A) with -100 padding).

    One forward pass over prefix + answer (right padded), then the LM head only at the positions
    that predict answer tokens: a 128k-word vocabulary times the whole prompt would dwarf the rest.
    """
    device = prefixes[0][0].device
    answer_embeds = [embed_ids(decoder, a, device) for a in answers]
    embeds, mask = assemble([list(p) + [e] for p, e in zip(prefixes, answer_embeds)])
    hidden = decoder.base_model(inputs_embeds=embeds, attention_mask=mask.long(), use_cache=False).last_hidden_state
    starts = [sum(s.size(0) for s in p) - 1 for p in prefixes]  # the position predicting answer token 0
    width = max(len(a) for a in answers)
    index = torch.zeros((len(answers), width), dtype=torch.long)
    targets = torch.full((len(answers), width), -100, dtype=torch.long)
    for i, (start, a) in enumerate(zip(starts, answers)):
        index[i, : len(a)] = torch.arange(start, start + len(a))
        targets[i, : len(a)] = torch.tensor(list(a), dtype=torch.long)
    index = index.to(device)
    picked = hidden.gather(1, index.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
    return decoder.get_output_embeddings()(picked).to(device), targets.to(device)  # a device_map's last device


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, first: Optional[int] = None) -> torch.Tensor:
    """Mean cross-entropy over the target tokens (only the first `first` of each answer when given)."""
    if first is not None:
        logits, targets = logits[:, :first], targets[:, :first]
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def distillation(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, tau: float, first_k: int,
                 topk: Optional[int]) -> torch.Tensor:
    """KL(teacher || student) at temperature tau over the first k answer positions, times tau^2 (Hinton et al.).

    With `topk`, both distributions are renormalised over the teacher's top-k tokens at each position.
    """
    s, t, valid = student[:, :first_k].float() / tau, teacher[:, :first_k].float() / tau, targets[:, :first_k] != -100
    if topk is not None and topk < t.size(-1):
        idx = t.topk(topk, dim=-1).indices
        s, t = s.gather(-1, idx), t.gather(-1, idx)
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1)
    return (kl * valid).sum() / valid.sum().clamp(min=1) * tau ** 2


def marginal_entropy(first_logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the batch's mean first-token distribution: low when every answer starts alike (collapse)."""
    p = F.softmax(first_logits.float(), dim=-1).mean(dim=0)
    return -(p * torch.log(p.clamp(min=1e-12))).sum()


@torch.no_grad()
def generate(decoder: nn.Module, *, input_ids: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
             attention_mask: torch.Tensor, max_new_tokens: int, stops: Sequence[int], pad_id: int,
             temperature: float = 0.0, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """New token ids (B, <= max_new_tokens) from left-padded ids or embeddings, through HF `generate`.

    `stops`: every id that ends an answer (`trainers.framework.generation.stop_token_ids`).
    """
    sample = temperature > 0
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sample, eos_token_id=list(stops) or None,
                                  pad_token_id=pad_id, attention_mask=attention_mask.long())
    if sample:
        kwargs.update(temperature=temperature, top_k=top_k, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    if input_ids is not None:
        out = decoder.generate(input_ids=input_ids, **kwargs)
        return out[:, input_ids.size(1):]
    return decoder.generate(inputs_embeds=inputs_embeds, **kwargs)
