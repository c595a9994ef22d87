"""How much the `lm` trainer costs over a plain PyTorch loop: same model, data, optimizer and steps.

    python bench/trainer_overhead.py [--steps 200] [--repeats 2] [--d-model 128] [--layers 4]

(a) a hand-written loop (nanoGPT's: get batch, forward, cross-entropy, backward, clip, AdamW step,
    cosine lr), no logging; (b) the `lm` trainer in this process with full logging (diagnostics
    JSONL every `log_every` steps, heartbeat, signal and budget checks, Accelerate). Both time the
    steps after a warm-up (start-up, tokenization and the final checkpoint are left out), `--repeats`
    times in alternating order; the median tokens/s of each and their ratio are printed. Target: >= 0.95.
A benchmark, not a test: on a shared machine, run it when the machine is quiet.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.record.atomicio import read_jsonl  # noqa: E402
from orchestrator.record.tree import ResultsRoot  # noqa: E402
from orchestrator.spec.schema import Spec, spec_to_yaml  # noqa: E402
from trainers.lm.config import LMSpec  # noqa: E402
from trainers.lm.data import BlockSampler, tokenize_to_memmap  # noqa: E402
from trainers.lm.trainer import build_optimizer, lr_at  # noqa: E402
from trainers.lm.models import build_model  # noqa: E402


def make_spec(args: argparse.Namespace) -> Spec:
    return LMSpec.model_validate({
        "name": "bench", "seed": 1337,
        "model": {"arch": "gpt2", "n_layer": args.layers, "n_head": 4, "d_model": args.d_model,
                  "max_seq_len": args.block, "dropout": 0.0},
        "tokenizer": {"type": "char"},
        "data": {"path": args.data} if args.data else {"builtin": "grammar"},
        "train": {"max_steps": args.steps, "batch_size": args.batch, "lr": 1e-3, "min_lr": 1e-4,
                  "warmup_steps": 10, "log_every": args.log_every, "device": "cpu"},
        "eval": {"every": 10**9, "at_end": False, "diversity": False},
        "checkpoint": {"every": 10**9, "keep_last": 1, "keep_best": False, "hf_format": False},
    })


def plain_loop(spec: Spec, data, warmup: int, every: int) -> list[float]:
    """nanoGPT's loop by hand; tokens/s of each `every`-step chunk after `warmup`."""
    t = spec.train
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.tokenizer.vocab_size)
    model.train()
    opt = build_optimizer(t, model, torch.device("cpu"))
    sampler = BlockSampler(data.train, spec.model.max_seq_len, t.batch_size, spec.seed)
    stamps = []
    for step in range(t.max_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, t.lr, t.min_lr, t.warmup_steps or 0, t.max_steps, t.schedule)
        x, y = sampler.next_batch("cpu")
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % every == 0 and step + 1 >= warmup:
            loss.item()  # (a no-op wait on CPU; keeps the comparison fair on GPU)
            stamps.append(time.perf_counter())
    tokens = every * t.batch_size * spec.model.max_seq_len
    return [tokens / (b - a) for a, b in zip(stamps, stamps[1:])]


def trainer_run(spec: Spec, results: Path, warmup: int) -> list[float]:
    """The lm trainer with full logging; tokens/s of each log interval after `warmup`, from its own diagnostics."""
    from trainers.framework.base import TrainerContext
    from trainers.lm.trainer import LMTrainer

    run = ResultsRoot(results).create_run(spec.name, {})
    run.paths.spec.write_text(spec_to_yaml(spec))
    LMTrainer(TrainerContext(run.paths.root, spec)).fit()
    recs = [r for r in read_jsonl(run.paths.diagnostics) if r["step"] >= warmup]
    return [(b["tokens_seen"] - a["tokens_seen"]) / (b["time"] - a["time"]) for a, b in zip(recs, recs[1:])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--data", default=None, help="a text file (default: the builtin grammar corpus)")
    args = ap.parse_args()
    spec = make_spec(args)
    warmup = args.log_every * 2
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        data = tokenize_to_memmap(spec.data, spec.tokenizer, Path.cwd(), results / ".cache" / "tokens")
        plain: list[float] = []
        ours: list[float] = []
        for i in range(args.repeats):  # alternate the order: neither side always runs on a warmer machine
            if i % 2 == 0:
                plain += (pr := plain_loop(spec, data, warmup, args.log_every))
                ours += (tr := trainer_run(spec, results, warmup))
            else:
                ours += (tr := trainer_run(spec, results, warmup))
                plain += (pr := plain_loop(spec, data, warmup, args.log_every))
            print(f"repeat {i + 1}: plain {statistics.median(pr):,.0f} tok/s, "
                  f"lm trainer {statistics.median(tr):,.0f} tok/s (medians of {args.log_every}-step chunks)", flush=True)
    # Medians of chunk rates: a burst of load from another process on a shared machine moves a mean, not a median.
    p, o = statistics.median(plain), statistics.median(ours)
    print(json.dumps({"model": f"gpt2 {args.layers}x{args.d_model}, block {args.block}, batch {args.batch}",
                      "steps": args.steps, "threads": torch.get_num_threads(),
                      "plain_tokens_per_sec": round(p), "trainer_tokens_per_sec": round(o),
                      "ratio": round(o / p, 3), "target": 0.95}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
