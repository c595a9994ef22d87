"""Tokens/s of the `lm` trainer against the leanest plain PyTorch GPT loop, same model sizes and batch.

    python bench/step_speed.py [--steps 300] [--repeats 2] [--threads 2] [--arch gpt2 nanogpt]

The model, optimizer and batch are jobs/shakespeare_char_cpu.yaml's (4 layers, 4 heads, d_model 128,
block 64, batch 12, AdamW betas 0.9/0.99, cosine lr), on char-level Tiny Shakespeare (`--data`; the
builtin grammar corpus when it is absent). Sides, interleaved in one run
(A B C A B C ...) so the load of a shared machine falls on all of them:

  plain     nanoGPT's model.py and train.py loop written out here: pre-norm blocks, fused QKV, SDPA
            causal attention, tied embeddings, biases as the job's `model.config.bias` (nanoGPT's
            `bias`), fused AdamW (nanoGPT's decay groups), cosine lr, clip 1.0, nanoGPT's get_batch;
            no logging, one host sync at the end
  plain[A]  the same loop around the trainer's model for the first `--arch` A (`build_model`; for gpt2,
            transformers' GPT-2): the model's share of any gap
  trainer   the `lm` trainer (`LMTrainer.fit`, Accelerate, diagnostics every log_every steps, heartbeat,
            signal and budget checks), once per `--arch`

Each side runs `--steps` optimizer steps; its tokens/s is measured from step `--warmup` to the end, per
wall second and per CPU second of the process (on a machine shared with other work the second is the
steadier figure: it counts what a step costs, not how long the scheduler left it waiting).
Torch threads are set once for the process (`--threads`, default 1), the same for every side.
A benchmark, not a test: the figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.record.tree import ResultsRoot  # noqa: E402
from orchestrator.spec.schema import spec_to_yaml  # noqa: E402
from trainers.lm.config import LMSpec  # noqa: E402
from trainers.lm.data import tokenize_to_memmap  # noqa: E402
from trainers.lm.trainer import lr_at  # noqa: E402

JOB = REPO / "jobs" / "shakespeare_char_cpu.yaml"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


# ------------------------------------------------------------------ nanoGPT, written out
class Block(nn.Module):
    def __init__(self, d: int, n_head: int, bias: bool) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=bias), nn.LayerNorm(d, bias=bias)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d: int, bias: bool = True) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.h = nn.ModuleList(Block(d, n_head, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=bias)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.logits(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class HFLoss(nn.Module):
    """The trainer's model (transformers) behind the same forward(idx, targets) -> loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=idx).logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(tokens: int, start: tuple[float, float]) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second of this process) since `start`."""
    wall, cpu = _clocks()
    return tokens / (wall - start[0]), tokens / (cpu - start[1])


def plain_loop(model: nn.Module, spec, train: np.ndarray, steps: int, warmup: int) -> tuple[float, float]:
    """nanoGPT's train.py inner loop; tokens/s (wall, CPU) from step `warmup` to `steps`."""
    t, block, bs = spec.train, spec.model.max_seq_len, spec.train.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=True)
    gen = torch.Generator().manual_seed(spec.seed)

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(train) - block, (bs,), generator=gen)
        x = torch.stack([torch.from_numpy(train[i : i + block].astype(np.int64)) for i in ix.tolist()])
        y = torch.stack([torch.from_numpy(train[i + 1 : i + 1 + block].astype(np.int64)) for i in ix.tolist()])
        return x, y

    model.train()
    start = None
    for step in range(steps):
        if step == warmup:
            start = _clocks()
        lr = lr_at(step, t.lr, t.min_lr, t.warmup_steps or 0, t.decay_steps, t.schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch()
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    return _rates((steps - warmup) * bs * block, start)


def trainer_run(spec, results: Path, warmup: int) -> tuple[float, float]:
    """The lm trainer's loop (its logging included); tokens/s (wall, CPU) from step `warmup` to the last step."""
    from trainers.framework.base import TrainerContext
    from trainers.lm.trainer import LMTrainer

    class Timed(LMTrainer):
        def train_step(self, step: int) -> dict:
            if step == warmup:
                self.start = _clocks()
            out = super().train_step(step)
            if step == spec.train.max_steps - 1:
                out["loss"].item()
                self.rates = _rates((step + 1 - warmup) * self.tokens_per_step, self.start)
            return out

    run = ResultsRoot(results).create_run(spec.name, {})
    run.paths.spec.write_text(spec_to_yaml(spec))
    trainer = Timed(TrainerContext(run.paths.root, spec))
    trainer.fit()
    return trainer.rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50, help="steps left out of the timing (a multiple of log_every)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arch", nargs="+", default=["gpt2"], help="model.arch values to run the trainer with")
    ap.add_argument("--data", type=Path, default=SHAKESPEARE)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import yaml

    job = yaml.safe_load(JOB.read_text())
    job["train"]["max_steps"] = args.steps
    job["eval"].update(every=10**9, at_end=False, prompts=[])
    job["checkpoint"] = {"every": 10**9, "keep_last": 1, "keep_best": False, "hf_format": False}
    job["data"] = {"path": str(args.data)} if args.data.exists() else {"builtin": "grammar"}
    job.pop("checks", None)
    def model_for(arch: str) -> dict:
        """The job's model section with `arch`; transformers' GPT-2 has no `bias` switch (always biased)."""
        config = {k: v for k, v in (job["model"].get("config") or {}).items() if arch == "nanogpt" or k != "bias"}
        return {**job["model"], "arch": arch, "config": config}

    specs = {arch: LMSpec.model_validate({**job, "model": model_for(arch)}) for arch in args.arch}
    base = specs[args.arch[0]]
    sides = ["plain", f"plain[{args.arch[0]}]"] + [f"trainer[{a}]" for a in args.arch]
    rates: dict[str, list[tuple[float, float]]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        data = tokenize_to_memmap(base.data, base.tokenizer, REPO, results / ".cache" / "tokens")
        vocab, m = data.tokenizer.vocab_size, base.model
        print(f"# {m.n_layer} layers x {m.d_model}, {m.n_head} heads, biases {m.config.get('bias', True)}, "
              f"block {m.max_seq_len}, batch "
              f"{base.train.batch_size}, vocab {vocab}; {args.steps} steps each, timed from step {args.warmup}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
        for rep in range(args.repeats):
            for side in sides:
                torch.manual_seed(base.seed)
                if side == "plain":
                    # nanoGPT's `bias` as the job's model.config sets it (the same network as the trainer's)
                    model = GPT(vocab, m.max_seq_len, m.n_layer, m.n_head, m.d_model, bool(m.config.get("bias", True)))
                    r = plain_loop(model, base, data.train, args.steps, args.warmup)
                elif side.startswith("plain["):
                    from trainers.lm.models import build_model

                    r = plain_loop(HFLoss(build_model(m, vocab)), base, data.train, args.steps, args.warmup)
                else:
                    r = trainer_run(specs[side[len("trainer["):-1]], results, args.warmup)
                rates[side].append(r)
                print(f"repeat {rep + 1} {side:>16}: {r[0]:>9,.0f} tok/s wall, {r[1]:>9,.0f} tok/CPU-s", flush=True)
    # Medians: a burst of load from another process on a shared machine moves a mean, not a median.
    # On a busy machine tokens per CPU-second (the work a step costs) is steadier than wall time.
    med = {s: [statistics.median(r[i] for r in v) for i in (0, 1)] for s, v in rates.items()}
    summary = {"tokens_per_sec_wall": {s: round(v[0]) for s, v in med.items()},
               "tokens_per_cpu_sec": {s: round(v[1]) for s, v in med.items()},
               "ratio_to_plain_wall": {s: round(v[0] / med["plain"][0], 3) for s, v in med.items()},
               "ratio_to_plain_cpu": {s: round(v[1] / med["plain"][1], 3) for s, v in med.items()},
               "target": "trainer >= 1.0x plain"}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
