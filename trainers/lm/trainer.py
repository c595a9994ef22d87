"""The built-in `lm` trainer: GPT-style language-model pretraining with Accelerate.

Composed of parts built from their own spec sections (as torchtitan does): data + tokenizer from
`data`/`tokenizer` (`trainers.lm.data`), the model from `model` (`trainers.lm.models`), optimizer and
schedule from `train` (here), evaluation from `eval` (`trainers.lm.diagnostics`). The loop, the
checkpoints, signals, budget and logging come from `trainers.framework.base.Trainer`; what is left here is
nanoGPT's step: draw a batch, forward, backward, clip, step, with no host sync per step.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from orchestrator.plan.arithmetic import CHINCHILLA_TOKENS_PER_PARAM, chinchilla_verdict  # one verdict with `orch plan`
from orchestrator.record.atomicio import append_jsonl
from trainers.framework.base import Budget, Outcome, Trainer
from trainers.lm.data import BlockSampler, iter_eval_batches, tokenize_to_memmap

_VAL_SEED, _TRAIN_EVAL_SEED = 1234, 4321  # fixed eval batches: losses compare across evaluations


# ----------------------------------------------------------------------------- optimizer and schedule
def build_optimizer(train: Any, model: torch.nn.Module, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2: linear layers, embeddings), not on biases and norms (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"lr": train.lr, "betas": (train.beta1, train.beta2)}
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)  # one kernel for all parameters
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(groups, **kwargs)


def warmup_steps(train: Any, total_steps: Optional[int]) -> int:
    if train.warmup_steps is not None:
        return train.warmup_steps
    if train.warmup_fraction is not None and total_steps:
        return int(round(train.warmup_fraction * total_steps))
    return 0


def lr_at(step: int, lr: float, min_lr: float, warmup: int, decay_steps: Optional[int], schedule: str) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine/linear decay to min_lr.

    As nanoGPT: warmup is lr * (step+1) / (warmup+1); after `decay_steps` the rate stays at min_lr.
    Without a step horizon (a run bounded only by time) the rate stays at lr after warmup.
    """
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if schedule == "constant" or decay_steps is None:
        return lr
    if step >= decay_steps:
        return min_lr
    ratio = (step - warmup) / max(1, decay_steps - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio)) if schedule == "cosine" else 1.0 - ratio
    return min_lr + coeff * (lr - min_lr)


def build_scheduler(train: Any, optimizer: torch.optim.Optimizer, total_steps: Optional[int]) -> Any:
    """A LambdaLR stepped once per optimizer step; its state (the step) is checkpointed."""
    warmup, decay = warmup_steps(train, total_steps), train.decay_steps or total_steps
    args = (train.lr, train.min_lr, warmup, decay, train.schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, *args) / train.lr)


class _Autocast:
    """Accelerate's autocast as a context manager that can be entered again and again (once per eval batch)."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self._active: list[Any] = []

    def __enter__(self) -> None:
        cm = self.accelerator.autocast()
        cm.__enter__()
        self._active.append(cm)

    def __exit__(self, *exc: Any) -> Any:
        return self._active.pop().__exit__(*exc)


# ----------------------------------------------------------------------------- the trainer
class LMTrainer(Trainer):
    """Causal LM pretraining on random contiguous blocks (nanoGPT), any transformers causal LM."""

    def setup(self) -> None:
        from accelerate.utils import set_seed

        from trainers.lm.models import build_model, param_counts

        ctx, spec, acc = self.ctx, self.spec, self.ctx.accelerator
        set_seed(spec.seed)  # the same initial weights on every process
        with acc.main_process_first():  # the first process tokenizes into the shared cache, the others map it
            self.data = tokenize_to_memmap(spec.data, spec.tokenizer, ctx.paths.root, ctx.cache_root,
                                           ctx.paths.tokenizer if ctx.is_main else None)
        self.tokenizer = self.data.tokenizer
        self.vocab_size = self.tokenizer.vocab_size
        model = build_model(spec.model, self.vocab_size, eos_id=self.tokenizer.eos_id,
                            length_multiples=spec.eval.length_multiples)
        self.params = param_counts(model)
        self.block = spec.model.max_seq_len
        t = spec.train
        self.tokens_per_step = t.batch_size * self.block * t.grad_accum * ctx.world_size
        self.epoch_tokens = len(self.data.train)
        total = Budget.from_spec(t, self.tokens_per_step, self.epoch_tokens).total_steps
        optimizer = build_optimizer(t, model, ctx.device)
        self.scheduler = build_scheduler(t, optimizer, total)
        if total is None and t.schedule != "constant" and not t.decay_steps:
            ctx.print("note: only max_time bounds this run and train.decay_steps is unset: lr stays constant after warmup")
        if t.compile:
            model = torch.compile(model)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # Accelerate's optimizer wrapper looks for an optional package (importlib.find_spec) twice on
        # every step(), ~1.5 ms per step on CPU; it is only needed for fp16's GradScaler. Without one,
        # the torch optimizer itself steps (gated on sync_gradients, as the wrapper does).
        self._stepper = self.optimizer if self.grad_scaler is not None else self.optimizer.optimizer
        self.sampler = BlockSampler(self.data.train, self.block, t.batch_size, spec.seed, ctx.rank, ctx.world_size)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._flops_per_token: Optional[float] = None
        self._peak: Optional[float] = None
        if ctx.device.type == "cuda":
            from trainers.lm.models import flops_per_token, peak_flops

            self._flops_per_token = flops_per_token(model.config, self.params["non_embedding"], self.block)
            self._peak = peak_flops(ctx.device, t.precision)
        ctx.record(params=self.params)
        ctx.print(f"model {spec.model.arch}: {self.params['total']:,} parameters "
                  f"({self.params['non_embedding']:,} non-embedding), vocab {self.vocab_size}, "
                  f"{len(self.data.train):,} train / {len(self.data.val):,} val tokens, "
                  f"{self.tokens_per_step} tokens per step")

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimizer step over `grad_accum` micro-batches (nanoGPT's inner loop)."""
        acc, clip = self.ctx.accelerator, self.spec.train.grad_clip
        lr = self.scheduler.get_last_lr()[0]
        loss_sum = grad_norm = None
        for _ in range(self.spec.train.grad_accum):
            x, y = self.sampler.next_batch(self.ctx.device)
            with acc.accumulate(self.model):
                logits = self.model(input_ids=x).logits
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
                acc.backward(loss)
                if acc.sync_gradients:
                    if clip:
                        grad_norm = acc.clip_grad_norm_(self._trainable, clip)
                    self._stepper.step()
                    self._stepper.zero_grad(set_to_none=True)
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        self.scheduler.step()
        out: dict[str, Any] = {"loss": loss_sum / self.spec.train.grad_accum, "lr": lr}
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    def log_extras(self, record: dict[str, Any]) -> None:
        """On GPU: model FLOPs utilization and memory of every device."""
        if self.ctx.device.type != "cuda":
            return
        if self._flops_per_token and self._peak:
            per_device = record["tokens_per_sec"] / self.ctx.world_size
            record["mfu"] = self._flops_per_token * per_device / self._peak
        mem = torch.tensor([torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()],
                           device=self.ctx.device, dtype=torch.float64)
        every = self.ctx.accelerator.gather(mem[None]).view(-1, 2).cpu() if self.ctx.world_size > 1 else mem[None].cpu()
        record["mem_allocated_gb"] = [round(float(v) / 2**30, 3) for v in every[:, 0]]
        record["mem_peak_gb"] = [round(float(v) / 2**30, 3) for v in every[:, 1]]

    # ---- evaluation ---------------------------------------------------------------------------
    def _split_loss(self, tokens: Any, seed: int, want_hidden: bool) -> tuple[float, Any]:
        """Mean loss over `eval.batches` fixed blocks, the batches shared out over processes."""
        from trainers.lm.diagnostics import estimate_loss

        ctx, ev = self.ctx, self.spec.eval
        bs = ev.batch_size or self.spec.train.batch_size
        mine = len(range(ctx.rank, ev.batches, ctx.world_size))
        raw = ctx.unwrap(self.model)
        result = None
        total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
        if mine:
            batches = iter_eval_batches(tokens, self.block, bs, ev.batches, seed, ctx.device, ctx.rank, ctx.world_size)
            result = estimate_loss(raw, batches, _Autocast(ctx.accelerator), return_hidden=want_hidden)
            loss = result.loss if want_hidden else result
            total += torch.tensor([loss * mine, mine], dtype=torch.float64, device=ctx.device)
        total = ctx.reduce_sum(total)
        return float(total[0] / total[1]), result

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, Any]:
        from trainers.lm.diagnostics import effective_rank_stats, evaluate_lengths, prediction_diversity, top_predictions

        ctx, ev = self.ctx, self.spec.eval
        want_hidden = ev.effective_rank or ev.diversity
        val_loss, res = self._split_loss(self.data.val, _VAL_SEED, want_hidden)
        train_loss, _ = self._split_loss(self.data.train, _TRAIN_EVAL_SEED, False)
        metrics: dict[str, Any] = {"train_loss": train_loss, "val_loss": val_loss,
                                   "val_ppl": math.exp(val_loss) if val_loss < 700 else float("inf")}
        extra: dict[str, Any] = {}
        if res is not None and ev.effective_rank:
            extra.update(effective_rank_stats(res.hidden))
        if res is not None and ev.diversity:
            extra["prediction_diversity"] = float(prediction_diversity(res.predictions))
        metrics.update(ctx.reduce_mean(extra))  # every process has batches: eval.batches >= processes
        if ev.diversity and res is not None and ctx.is_main:
            metrics["top_predictions"] = top_predictions(res.predictions, self.tokenizer, k=5)
        if ev.length_multiples and ctx.is_main:  # main only: a research diagnostic, not a stopping metric
            bs = ev.batch_size or self.spec.train.batch_size
            metrics.update(evaluate_lengths(ctx.unwrap(self.model), self.data.val, self.block, ev.length_multiples,
                                            bs, ctx.device, n_windows=ev.length_windows,
                                            autocast_ctx=_Autocast(ctx.accelerator)))
        return metrics

    # ---- the end --------------------------------------------------------------------------------
    def finish(self, outcome: Outcome) -> dict[str, Any]:
        """Samples for `eval.prompts`; params, tokens/param and the Chinchilla comparison for metrics.json."""
        ctx, ev = self.ctx, self.spec.eval
        if ev.prompts and ctx.is_main:
            from trainers.framework.generation import generate

            texts = generate(ctx.unwrap(self.model), self.tokenizer, list(ev.prompts), ev.max_new_tokens,
                             ev.temperature, ev.top_k, ev.top_p, seed=self.spec.seed)
            for prompt, text in zip(ev.prompts, texts):
                append_jsonl(ctx.paths.samples, {"step": self.step, "prompt": prompt, "completion": text,
                                                 "temperature": ev.temperature, "top_k": ev.top_k, "top_p": ev.top_p})
        n = self.params["total"]
        optimal = CHINCHILLA_TOKENS_PER_PARAM * n
        ratio = self.tokens_seen / optimal if optimal else None
        final, best = ctx.paths.ckpt / "hf-final" / "model", ctx.paths.ckpt / "best" / "model"
        return {
            "params": self.params,
            "tokens_per_param": self.tokens_seen / n if n else None,
            "tokens_per_non_embedding_param": self.tokens_seen / self.params["non_embedding"]
            if self.params["non_embedding"] else None,
            "chinchilla": {
                "tokens_per_param_optimal": CHINCHILLA_TOKENS_PER_PARAM,
                "optimal_tokens": int(optimal),
                "ratio_to_optimal": ratio,
                "verdict": chinchilla_verdict(self.tokens_seen, n),
            },
            "hf_final": str(final) if final.is_dir() else None,
            "hf_best": str(best) if best.is_dir() else None,
            "tokenizer": str(ctx.paths.tokenizer),
        }

