"""The `latentwire` trainer: teach a small encoder to speak to a frozen LLM in continuous vectors.

A SQuAD context (~250 tokens) is compressed by a trained encoder into K = `model.latent_len`
vectors in the decoder's embedding space; the frozen decoder (any `AutoModelForCausalLM`, e.g.
Llama-3.1-8B-Instruct) reads [bos] + latents + "\\nQuestion: ...\\nAnswer:" through
`inputs_embeds` and must answer. The encoder and its adapter train, and with `model.lora` LoRA
adapters on the decoder too (`peft`); the decoder's own weights never change.

Composed of parts built from their own spec sections: SQuAD from `data` (`latentwire.data`), the
decoder from `model` + `tokenizer` and the encoder from `model` (`latentwire.model`), the objectives
weighted by `loss` (here), the evaluation modes from `eval` (`latentwire.evaluation`), optimizer and
schedule from `train` (shared with `lm`). The loop, checkpoints (`TrainedParts`: the encoder and the
LoRA weights; never the frozen decoder), signals, budget and logging come from
`trainers.framework.base.Trainer`.

Losses per micro-batch, each weighted in `loss:`: teacher-forced answer cross-entropy (tf), the
first answer token's cross-entropy (first: the token a collapsed model gets wrong), the first
`kce_tokens` tokens' cross-entropy (kce), distillation from the decoder reading the full text
prompt (kd; with LoRA the teacher is the original decoder, adapters off), a reward for entropy of
the batch's first-token distribution (against collapse), and the teacher-forced cross-entropy of
the uncompressed path (adapter: every context token through the encoder and adapter).
"""
from __future__ import annotations

import contextlib
import math
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch

from orchestrator.record.atomicio import append_jsonl
from trainers.framework.base import Budget, Outcome, Trainer, TrainerContext
from trainers.framework.generation import stop_token_ids
from trainers.latentwire.data import ExampleSampler, corpus_text, encode_examples, load_squad, prompt_pieces
from trainers.latentwire.evaluation import FROZEN_MODES, ModeRunner, evaluate_mode, predictions_agree, summarize
from trainers.latentwire.model import (LatentEncoder, TrainedParts, answer_logits, attach_lora, distillation,
                                       embed_ids, embed_rms, input_device, load_decoder, lora_parameters,
                                       marginal_entropy, masked_ce, pad_ids)
from trainers.lm.trainer import build_optimizer, build_scheduler


class LatentWireTrainer(Trainer):
    """Encoder + adapter (and optional LoRA) trained against a frozen decoder; evaluated in six prompt modes."""

    # ---- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate.utils import set_seed

        ctx, spec, acc = self.ctx, self.spec, self.ctx.accelerator
        m, t = spec.model, spec.train
        set_seed(spec.seed)
        with acc.main_process_first():  # the first process fills the datasets cache and builds a tiny decoder
            train_ds, eval_ds = load_squad(spec.data, spec.seed)
            spec_file = ctx.run.record.get("spec_file")
            self.decoder, self.tokenizer, source = load_decoder(
                m, spec.tokenizer, ctx.paths.root, lambda: corpus_text(train_ds), spec.seed, ctx.is_main,
                ctx.device, Path(spec_file).parent if spec_file else None)
        if ctx.is_main:
            self.tokenizer.save(ctx.paths.tokenizer)  # checkpoints carry it beside the encoder
        self.pieces = prompt_pieces(self.tokenizer, m)
        self.stops = stop_token_ids(self.decoder, self.tokenizer)
        self.train_examples = encode_examples(train_ds, self.tokenizer, m)
        self.eval_examples = encode_examples(eval_ds, self.tokenizer, m)
        width = self.decoder.get_input_embeddings().embedding_dim
        encoder = LatentEncoder(width, m, embed_rms(self.decoder)).to(ctx.device)
        self.peft = attach_lora(self.decoder, m.lora) if m.lora else None  # after the encoder: LoRA leaves its init alone
        parts = TrainedParts(encoder, lora_parameters(self.peft) if self.peft is not None else None)
        optimizer = build_optimizer(t, parts, ctx.device)
        # Budget unit: tokens of text the system reads per question (context + question + anchor + answer),
        # so tok/s means something and `train.epochs` counts passes over the questions.
        per_q = round(sum(len(e.context_ids) + len(e.question_ids) + len(e.answer_ids) for e in self.train_examples)
                      / max(1, len(self.train_examples))) + len(self.pieces.anchor)
        self.tokens_per_step = t.batch_size * t.grad_accum * ctx.world_size * per_q
        self.epoch_tokens = len(self.train_examples) * per_q
        total = Budget.from_spec(t, self.tokens_per_step, self.epoch_tokens).total_steps
        self.scheduler = build_scheduler(t, optimizer, total)
        # DDP over what trains (encoder + LoRA); a device_map decoder's LoRA weights stay on their devices
        self.model, self.optimizer = acc.prepare(parts, optimizer, device_placement=[not m.device_map, True])
        self.sampler = ExampleSampler(len(self.train_examples), t.batch_size, spec.seed, ctx.rank, ctx.world_size)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._frozen_results: dict[str, tuple[list[dict[str, Any]], float]] = {}
        self._first_preds: Optional[torch.Tensor] = None
        self._collapse_since: Optional[int] = None
        self._collapse_warned = False
        n_enc = sum(p.numel() for p in encoder.parameters())
        n_lora = sum(p.numel() for p in parts.lora.parameters())
        n_dec = sum(p.numel() for p in self.decoder.parameters() if not p.requires_grad)
        ctx.record(params={"trainable": n_enc + n_lora, "encoder": n_enc, "lora": n_lora, "decoder_frozen": n_dec})
        devices = sorted({str(w.device) for w in self.decoder.state_dict().values()})
        placed = f", device_map {m.device_map}: {devices}" if m.device_map else ""
        lora = f"; LoRA rank {m.lora.rank} on {sorted(self.peft.peft_config['default'].target_modules)}: " \
               f"{n_lora:,} trainable" if m.lora else ""
        ctx.print(f"decoder {source}: {n_dec:,} frozen parameters ({self.decoder.dtype}, "
                  f"{getattr(self.decoder.config, '_attn_implementation', '?')} attention{placed}"
                  f"{', gradient checkpointing' if m.gradient_checkpointing else ''}); encoder + adapter "
                  f"{n_enc:,} trainable{lora}; stop ids {self.stops}; K={m.latent_len}; "
                  f"{len(self.train_examples):,} train / {len(self.eval_examples):,} eval questions; "
                  f"{total or '?'} steps")

    # ---- training ---------------------------------------------------------------------------------
    def _emb(self, ids: list[int]) -> torch.Tensor:
        return embed_ids(self.decoder, ids, self.ctx.device)

    def _baseline(self) -> Any:
        """The context in which the decoder is the original one: LoRA adapters off (nothing without LoRA)."""
        return self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()

    def _prefixes(self, batch: list[Any], vectors: Any) -> list[list[torch.Tensor]]:
        """[bos] + the context's vectors + question + anchor (+ the chat template's assistant header)."""
        p, where, dtype = self.pieces, input_device(self.decoder), self.decoder.dtype
        return [([self._emb(p.bos)] if p.bos else []) + [z.to(device=where, dtype=dtype),
                                                          self._emb(ex.question_ids + p.anchor + p.end)]
                for ex, z in zip(batch, vectors)]

    def losses(self, batch: list[Any]) -> dict[str, torch.Tensor]:
        """Every objective and first-token statistic of one micro-batch (weights from `loss:`)."""
        w, p, dec = self.spec.loss, self.pieces, self.decoder
        ids, mask = pad_ids([ex.context_ids for ex in batch], 0, input_device(dec))
        context = dec.get_input_embeddings()(ids).to(self.ctx.device)
        encoded = self.model(context, mask.to(self.ctx.device), uncompressed=bool(w.adapter_weight))
        latents, tokens = encoded if w.adapter_weight else (encoded, None)
        prefixes = self._prefixes(batch, latents)
        answers = [ex.answer_ids for ex in batch]
        logits, targets = answer_logits(dec, prefixes, answers)
        out = {"tf_loss": masked_ce(logits, targets), "first_loss": masked_ce(logits, targets, first=1),
               "kce_loss": masked_ce(logits, targets, first=w.kce_tokens),
               "entropy": marginal_entropy(logits[:, 0])}
        loss = w.tf_weight * out["tf_loss"] + w.first_token_weight * out["first_loss"] + \
            w.kce_weight * out["kce_loss"] - w.entropy_weight * out["entropy"]
        if tokens is not None:  # the uncompressed path: every context token through the encoder and adapter
            full = self._prefixes(batch, [tokens[i, : len(ex.context_ids)] for i, ex in enumerate(batch)])
            adapter_logits, adapter_targets = answer_logits(dec, full, answers)
            out["adapter_loss"] = masked_ce(adapter_logits, adapter_targets)
            loss = loss + w.adapter_weight * out["adapter_loss"]
        if w.kd_weight:
            with torch.no_grad(), self._baseline():  # the teacher: the original decoder reading the context as text
                teacher = [[self._emb(p.bos + p.context_label + ex.context_ids + ex.question_ids + p.anchor + p.end)]
                           for ex in batch]
                teacher_logits, _ = answer_logits(dec, teacher, answers)
            out["kd_loss"] = distillation(logits, teacher_logits, targets, w.kd_tau, w.kd_first_k, w.kd_topk)
            loss = loss + w.kd_weight * out["kd_loss"]
        first = logits[:, 0].detach()
        top5 = first.topk(min(5, first.size(-1)), dim=-1).indices
        gold = targets[:, 0:1]
        out["first_acc"] = (top5[:, :1] == gold).float().mean()
        out["first_acc_top5"] = (top5 == gold).any(dim=-1).float().mean()
        self._first_preds = top5[:, 0]
        out["loss"] = loss
        return out

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimizer step over `grad_accum` micro-batches; the frozen decoder only passes gradients through.

        The decoder is in train mode for the step (gradient checkpointing and LoRA dropout act only
        then; its own dropout is off, see `model.freeze`) and back in eval mode afterwards.
        """
        acc, t = self.ctx.accelerator, self.spec.train
        lr = self.scheduler.get_last_lr()[0]
        sums: dict[str, torch.Tensor] = {}
        grad_norm = None
        self.decoder.train()
        try:
            for _ in range(t.grad_accum):
                batch = [self.train_examples[i] for i in self.sampler.next_indices()]
                with acc.accumulate(self.model):
                    with acc.autocast():
                        parts = self.losses(batch)
                    acc.backward(parts["loss"])
                    if acc.sync_gradients:
                        grad_norm = acc.clip_grad_norm_(self._trainable, t.grad_clip or math.inf)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for k, v in parts.items():
                    sums[k] = v.detach() if k not in sums else sums[k] + v.detach()
        finally:
            self.decoder.eval()
        self.scheduler.step()
        out: dict[str, Any] = {k: v / t.grad_accum for k, v in sums.items()}
        out["lr"] = lr
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    def log_extras(self, record: dict[str, Any]) -> None:
        """First-token diversity over the global batch, the dominant predictions, the collapse alarm, GPU memory."""
        ctx = self.ctx
        if self._first_preds is not None:
            preds = ctx.accelerator.gather(self._first_preds) if ctx.world_size > 1 else self._first_preds
            counts = Counter(preds.cpu().tolist())
            dominant = counts.most_common(5)
            record["prediction_diversity"] = len(counts)
            record["batch_size_seen"] = int(preds.numel())
            record["dominant_share"] = dominant[0][1] / preds.numel()
            record["dominant_predictions"] = [[self.tokenizer.decode([tok]), n] for tok, n in dominant]
            self._check_collapse(record)
        if ctx.device.type == "cuda":
            mem = torch.tensor([torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()],
                               device=ctx.device, dtype=torch.float64)
            every = ctx.accelerator.gather(mem[None]).view(-1, 2).cpu() if ctx.world_size > 1 else mem[None].cpu()
            record["mem_allocated_gb"] = [round(float(v) / 2**30, 3) for v in every[:, 0]]
            record["mem_peak_gb"] = [round(float(v) / 2**30, 3) for v in every[:, 1]]

    def _check_collapse(self, record: dict[str, Any]) -> None:
        """Warn (training.log + the record) once the batch's first tokens have been collapsed for
        `eval.collapse_patience` steps: fewer than `collapse_min_diversity` distinct ones, or one of
        them predicted for more than `collapse_max_share` of the batch."""
        ev = self.spec.eval
        diversity, share = record["prediction_diversity"], record["dominant_share"]
        if diversity >= ev.collapse_min_diversity and share <= ev.collapse_max_share:
            if self._collapse_since is not None and self._collapse_warned:
                self.ctx.print(f"step {self.step}: first-token predictions recovered ({diversity} distinct, "
                               f"the most frequent {share:.0%} of the batch)")
            self._collapse_since, self._collapse_warned = None, False
            record["mode_collapse"] = False
            return
        if self._collapse_since is None:
            self._collapse_since = self.step - self.spec.train.log_every  # collapsed since about the last log step
        steps = self.step - self._collapse_since
        record["mode_collapse"] = steps >= ev.collapse_patience
        record["collapse_steps"] = steps
        if steps >= ev.collapse_patience and not self._collapse_warned:
            self._collapse_warned = True
            shown = ", ".join(f"{tok!r} x{n}" for tok, n in record["dominant_predictions"])
            self.ctx.print(f"WARNING: mode collapse: {diversity} distinct first tokens over a batch of "
                           f"{record['batch_size_seen']}, the most frequent {share:.0%} of it, for {steps} steps "
                           f"(eval.collapse_min_diversity {ev.collapse_min_diversity}, collapse_max_share "
                           f"{ev.collapse_max_share}, collapse_patience {ev.collapse_patience}); predicting {shown}. "
                           "Consider raising loss.first_token_weight, loss.kd_weight or loss.entropy_weight.")

    # ---- evaluation -------------------------------------------------------------------------------
    def _gather(self, items: list[Any]) -> list[Any]:
        if self.ctx.world_size == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(items)

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, Any]:
        """Every mode on the same eval questions (shared out over processes); frozen modes run once."""
        ctx, ev, spec = self.ctx, self.spec.eval, self.spec
        encoder = ctx.unwrap(self.model)
        encoder.eval()
        runner = ModeRunner(self.decoder, encoder, self.tokenizer, self.pieces, spec.model.latent_len, ev,
                            ctx.device, ctx.accelerator.autocast, self.stops, self._baseline)
        mine = self.eval_examples[ctx.rank::ctx.world_size]
        batch_size = ev.batch_size or spec.train.batch_size
        metrics: dict[str, Any] = {}
        records_by_mode: dict[str, list[dict[str, Any]]] = {}
        try:
            with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
                torch.manual_seed(spec.seed)  # sampling (temperature > 0) is the same at every evaluation
                for mode in ev.modes:
                    cached = mode in FROZEN_MODES and mode in self._frozen_results
                    if cached:  # the decoder is frozen: these cannot change during training
                        records, seconds = self._frozen_results[mode]
                    else:
                        records, seconds = evaluate_mode(runner, mode, mine, batch_size, self._gather)
                        if mode in FROZEN_MODES:
                            self._frozen_results[mode] = (records, seconds)
                        if ctx.is_main:
                            for r in records:
                                append_jsonl(ctx.paths.predictions, {"step": step, **{k: r[k] for k in (
                                    "id", "question", "gold_answers", "prediction", "mode")}})
                    records_by_mode[mode] = records
                    metrics[mode] = {**summarize(records, seconds, self.tokenizer), "cached": cached}
        finally:
            encoder.train()
        if "text" in records_by_mode and "embeddings" in records_by_mode:
            metrics["text_embeddings_agreement"] = predictions_agree(records_by_mode["text"],
                                                                     records_by_mode["embeddings"])
        if "latent" in metrics and metrics["latent"].get("nll") is not None:
            metrics["val_loss"] = metrics["latent"]["nll"]  # checkpoint.metric / early stopping default
        self._print_table(step, metrics)
        return metrics

    def _print_table(self, step: int, metrics: dict[str, Any]) -> None:
        lines = [f"eval step {step}: {'mode':<13}{'F1':>7}{'EM':>7}{'first':>7}{'top5':>7}{'NLL':>8}"
                 f"{'x':>6}{'div':>5}{'s':>8}"]
        for mode in self.spec.eval.modes:
            r = metrics[mode]
            nll = f"{r['nll']:.3f}" if r.get("nll") is not None else "-"
            lines.append(f"  {mode:<13}{r['f1']:7.1f}{r['em']:7.1f}{r['first_token_acc']:7.3f}"
                         f"{r['first_token_top5_acc']:7.3f}{nll:>8}{r['compression']:6.1f}"
                         f"{r['prediction_diversity']:5d}{r['seconds']:8.2f}" + ("  (cached)" if r["cached"] else ""))
        self.ctx.print("\n".join(lines))

    # ---- the end --------------------------------------------------------------------------------
    def finish(self, outcome: Outcome) -> dict[str, Any]:
        """Per-mode metrics at the top of metrics.json, so checks read `latent.first_token_acc`."""
        modes = {mode: self.last_eval[mode] for mode in self.spec.eval.modes if mode in self.last_eval}
        final = self.ctx.paths.ckpt / "hf-final" / "model"
        lora = self.spec.model.lora
        return {**modes, "text_embeddings_agreement": self.last_eval.get("text_embeddings_agreement"),
                "latent_len": self.spec.model.latent_len, "encoder": str(final) if final.is_dir() else None,
                "lora": lora.model_dump() if lora else None, "tokenizer": str(self.ctx.paths.tokenizer)}


def make(ctx: TrainerContext) -> LatentWireTrainer:
    return LatentWireTrainer(ctx)
