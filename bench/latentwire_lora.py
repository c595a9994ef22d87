"""LatentWire on a decoder the `lm` trainer trained, with and without LoRA: latent vs token_budget, on CPU.

    python bench/latentwire_lora.py [--squad FILE] [--out figures.json] [--keep DIR]

Three runs through orch itself (`orch submit --wait`, local backend, a temporary results tree):

  1. `lm`: a small Llama pretrained on the SQuAD sample's *training* paragraphs laid out as the
     latentwire prompts are ("Context: ...\\nQuestion: ...\\nAnswer: ..."); the paragraphs
     latentwire holds out for evaluation (the same hash split, data.val_fraction) are left out;
  2. `latentwire` (jobs/latentwire_smoke.yaml) on that run's hf-final model (model.decoder_from_run),
     the decoder frozen, the encoder trained;
  3. the same with LoRA on the decoder's attention projections (model.lora).

Prints first-token accuracy and SQuAD F1/EM of every evaluated mode of runs 2 and 3 (from their
eval/metrics.json). A figure printer, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainers.latentwire.data import _context_bucket  # noqa: E402

SQUAD = REPO.parent / "shared" / "data" / "squad" / "dev-v2.0-sample.json"
VAL_FRACTION = 0.2  # jobs/latentwire_smoke.yaml's data.val_fraction
MODES = ("text", "anchor", "adapter", "latent", "token_budget")
LM_SPEC = """\
name: lw-bench-decoder
trainer: lm
seed: 7
model: {{arch: llama, n_layer: {layers}, n_head: 4, d_model: {width}, max_seq_len: 128}}
tokenizer: {{type: bpe, vocab_size: 1024}}
data: {{path: {corpus}, val_fraction: 0.05}}
train: {{max_steps: {steps}, batch_size: {batch}, lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 10, log_every: 25, device: cpu}}
eval: {{every: {steps}, batches: 4}}
checkpoint: {{every: {steps}, keep_last: 1}}
resources: {{cpus_per_task: 1}}
"""


def corpus(squad: Path) -> str:
    """Training paragraphs only, each question as a prompt + answer in the latentwire layout."""
    parts = []
    for article in json.loads(squad.read_text())["data"]:
        for para in article["paragraphs"]:
            if _context_bucket(para["context"]) < VAL_FRACTION:
                continue  # held out: latentwire evaluates on these
            for qa in para["qas"]:
                if qa.get("answers"):
                    parts.append(f"Context: {para['context']}\nQuestion: {qa['question'].strip()}\n"
                                 f"Answer: {qa['answers'][0]['text'].strip()}")
    return "\n\n".join(parts)


def orch(results: Path, *args: str) -> None:
    env = {**os.environ, "ORCH_RESULTS": str(results), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, capture_output=True,
                         text=True)
    if res.returncode:
        raise SystemExit(f"orch {' '.join(args)} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def metrics_of(results: Path, name: str) -> dict[str, Any]:
    [run] = [p for p in results.glob(f"{name}/*") if (p / "eval" / "metrics.json").is_file()]
    return json.loads((run / "eval" / "metrics.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--squad", type=Path, default=SQUAD)
    ap.add_argument("--lm-steps", type=int, default=200)
    ap.add_argument("--lm-width", type=int, default=64, help="the lm decoder's d_model")
    ap.add_argument("--lm-layers", type=int, default=2)
    ap.add_argument("--lm-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100, help="latentwire steps per run")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    ap.add_argument("--keep", type=Path, help="results tree to keep (default: a temporary one)")
    args = ap.parse_args()
    if not args.squad.is_file():
        raise SystemExit(f"the SQuAD sample {args.squad} is absent (--squad FILE)")
    tmp = Path(tempfile.mkdtemp(prefix="lw-bench-"))
    results = args.keep or tmp / "results"
    results.mkdir(parents=True, exist_ok=True)
    (tmp / "corpus.txt").write_text(corpus(args.squad))
    (tmp / "decoder.yaml").write_text(LM_SPEC.format(corpus=tmp / "corpus.txt", steps=args.lm_steps, width=args.lm_width,
                                                      layers=args.lm_layers, batch=args.lm_batch))
    t0 = time.time()
    orch(results, "submit", str(tmp / "decoder.yaml"), "--wait")
    print(f"lm decoder: {args.lm_steps} steps in {time.time() - t0:.0f} s", flush=True)
    common = ["--set", f"data.path={args.squad}", "--set", "model.decoder=null", "--set", "model.decoder_config=null",
              "--set", "model.decoder_from_run=lw-bench-decoder", "--set", f"train.max_steps={args.steps}",
              "--set", f"eval.every={args.steps}", "--set", f"checkpoint.every={args.steps}",
              "--set", "data.eval_samples=48", "--set", "eval.modes=[" + ",".join(MODES) + "]"]
    runs = {"frozen decoder": ("lw-bench-frozen", []),
            f"LoRA rank {args.lora_rank}": ("lw-bench-lora", ["--set", f"model.lora.rank={args.lora_rank}",
                                                              "--set", f"model.lora.alpha={2 * args.lora_rank}",
                                                              "--set", "model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]"])}
    figures: dict[str, Any] = {}
    for label, (name, extra) in runs.items():
        t0 = time.time()
        orch(results, "submit", "jobs/latentwire_smoke.yaml", "--set", f"name={name}", *common, *extra, "--wait")
        m = metrics_of(results, name)
        figures[label] = {mode: {k: m[mode][k] for k in ("first_token_acc", "f1", "em", "compression", "n")}
                          for mode in MODES} | {"seconds": round(time.time() - t0, 1)}
        print(f"{label}: {args.steps} steps in {figures[label]['seconds']:.0f} s", flush=True)
    print(f"\n{'run':<16}{'mode':<14}{'first-token acc':>16}{'F1':>8}{'EM':>8}{'compression':>13}")
    for label, per_mode in figures.items():
        for mode in MODES:
            r = per_mode[mode]
            print(f"{label:<16}{mode:<14}{r['first_token_acc']:>16.3f}{r['f1']:>8.1f}{r['em']:>8.1f}"
                  f"{r['compression']:>13.1f}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
