"""Val loss of jobs/shakespeare_char_cpu.yaml: the `lm` trainer vs nanoGPT's own model and loop, same recipe and seeds.

    python bench/shakespeare_reference.py [--seeds 1337 1] [--threads 2]

Per seed, one after the other:

  nanoGPT  nanoGPT's model.py and train.py loop written out (bench/step_speed.py's `GPT` and
           `plain_loop`: pre-norm blocks, SDPA, tied embeddings, the job's `bias`, fused AdamW with
           nanoGPT's decay groups, its warmup + cosine lr, clip 1.0, its get_batch), the job's
           model sizes, batch, steps and optimizer settings
  orch     `orch submit jobs/shakespeare_char_cpu.yaml --set seed=S --wait`, as a user runs it; its
           final model loaded from `ckpt/hf-final/model` with transformers' AutoModelForCausalLM

Each final model is scored on the whole validation split (every 64-token window: 111k tokens, the
contexts training sees) and by nanoGPT's own estimate (`estimate_loss`: the mean loss of eval_iters=20
random batches of 12, which nanoGPT's README run prints), drawn 200 times: its mean, its spread and how
often it prints 1.88 or less. A benchmark, not a test: it trains 2 x len(seeds) models (minutes each).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from step_speed import GPT, JOB, SHAKESPEARE, plain_loop  # noqa: E402  (nanoGPT written out)
from trainers.lm.config import LMSpec  # noqa: E402
from trainers.lm.data import _gather_blocks, tokenize_to_memmap  # noqa: E402
from trainers.lm.diagnostics import estimate_loss  # noqa: E402


class AsCausalLM(torch.nn.Module):
    """nanoGPT's model behind transformers' call, `model(input_ids=x).logits`, as the trainer's evaluation calls it."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.gpt.logits(input_ids))


@torch.no_grad()
def full_val_loss(model: torch.nn.Module, val: np.ndarray, block: int) -> float:
    """Mean next-token loss over every non-overlapping `block`-token window of the validation split."""
    starts = torch.arange(0, len(val) - block - 1, block)
    total, n = 0.0, 0
    for i in range(0, len(starts), 256):
        x, y = _gather_blocks(val, starts[i : i + 256], block)
        logits = model(input_ids=x).logits
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        n += y.numel()
    return total / n


def nanogpt_estimates(model: torch.nn.Module, val: np.ndarray, block: int, batch: int, iters: int = 20,
                      draws: int = 200, seed: int = 0) -> list[float]:
    """What nanoGPT's `estimate_loss` prints for the val split, `draws` times (random batches each time)."""
    gen = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(iters):
            yield _gather_blocks(val, torch.randint(len(val) - block, (batch,), generator=gen), block)

    with torch.no_grad():
        return [estimate_loss(model, batches()) for _ in range(draws)]


def orch_run(results: Path, data: Path, seed: int, threads: int) -> Path:
    """`orch submit ... --wait` of the job with this seed; its final model folder."""
    env = {**os.environ, "ORCH_RESULTS": str(results), "OMP_NUM_THREADS": str(threads)}
    name = f"shakespeare-seed{seed}"
    subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(JOB), "--set", f"data.path={data}",
                    "--set", f"seed={seed}", "--set", f"name={name}", "--set", f"resources.cpus_per_task={threads}",
                    "--wait"], env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    (run,) = (results / name).iterdir()
    return run / "ckpt" / "hf-final" / "model"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=SHAKESPEARE)
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"Tiny Shakespeare is not at {args.data}: give --data PATH")
    torch.set_num_threads(args.threads)
    import yaml

    job = yaml.safe_load(JOB.read_text())
    job["data"]["path"] = str(args.data.resolve())
    spec = LMSpec.model_validate(job)
    m, t = spec.model, spec.train
    from transformers import AutoModelForCausalLM

    import trainers.lm.fastgpt  # noqa: F401  (registers model.arch nanogpt with the Auto classes)

    print(f"# {JOB.name}: {m.arch}, {m.n_layer} layers x {m.d_model}, {m.n_head} heads, biases "
          f"{m.config.get('bias', True)}, block {m.max_seq_len}, batch {t.batch_size}, {t.max_steps} steps, "
          f"lr {t.lr} -> {t.min_lr}; torch {torch.__version__}, {args.threads} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        data = tokenize_to_memmap(spec.data, spec.tokenizer, REPO, results / ".cache" / "tokens")
        val, vocab = np.asarray(data.val), data.tokenizer.vocab_size
        for seed in args.seeds:
            torch.manual_seed(seed)
            gpt = GPT(vocab, m.max_seq_len, m.n_layer, m.n_head, m.d_model, bool(m.config.get("bias", True)))
            plain_loop(gpt, spec.model_copy(update={"seed": seed}), data.train, t.max_steps, 0)
            orch_model = AutoModelForCausalLM.from_pretrained(orch_run(results, args.data.resolve(), seed, args.threads))
            for side, model in (("nanoGPT", AsCausalLM(gpt).eval()), ("orch", orch_model.eval())):
                full = full_val_loss(model, val, m.max_seq_len)
                est = nanogpt_estimates(model, val, m.max_seq_len, t.batch_size)
                rows.append({"seed": seed, "side": side, "full_val_loss": round(full, 4),
                             "estimate_mean": round(statistics.mean(est), 4),
                             "estimate_sd": round(statistics.stdev(est), 4),
                             "estimate_range": [round(min(est), 4), round(max(est), 4)],
                             "estimates_at_most_1.88": sum(e <= 1.88 for e in est) / len(est)})
                print(json.dumps(rows[-1]), flush=True)
    for side in ("nanoGPT", "orch"):
        full = [r["full_val_loss"] for r in rows if r["side"] == side]
        print(f"{side:>8}: whole val split {statistics.mean(full):.4f} (seeds: {', '.join(f'{v:.4f}' for v in full)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
