"""The trainers on a real GPU: bf16, torch.compile, MFU and memory, measured in one command.

    python bench/gpu_check.py --out gpu.json         # a GPU node: GPT-2-124M-sized, < 8 min on one H100/H200
    python bench/gpu_check.py --cpu --out cpu.json   # reduced sizes on CPU (what CI runs, about a minute)

CPU mode is chosen automatically when torch sees no CUDA device. Every run goes through orch
itself, in a temporary results tree on the local backend: a generated spec is submitted with
`orch submit --wait`, and the figures are read from what the trainer wrote (logs/
train_diagnostics.jsonl: tokens/s, MFU and memory per log interval; eval/metrics.json). The second
half of a resume check raises the finished run's step budget and starts its next attempt as the
job wrapper starts a trainer, `python -m trainers RUN_DIR` (`orch resume` refuses a COMPLETED run).
Sections, which are also the keys of the JSON written to `--out`:

  env         device name(s) and memory, torch / CUDA / cuDNN / transformers / accelerate versions
  config      the model (gpt2, 12 layers, 12 heads, d_model 768, block 1024 on GPU), its parameters,
              FLOPs per token as orch computes them (trainers.lm.models.flops_per_token) and by hand
              here (6N + 12 * L * H * Q * T: PaLM appendix B, nanoGPT's estimate_mfu), the bf16 peak
  lm          the `lm` trainer in bf16 with torch.compile: tokens/s, step time, MFU (orch's, logged
              by the trainer, and the hand count against this script's own peak table), peak memory
  plain       the same model class, batch, precision and compile as a minimal nanoGPT-style PyTorch
              loop in this process, on the tokens the lm run cached (no orch code in the loop):
              its tokens/s and the ratio lm / plain
  lm_eager    the `lm` run with compile off: the compile speed-up (skipped when compile is off)
  lm_fp16     fp16 with GradScaler (Accelerate's), compile off: compare with lm_eager (bf16, compile
              off); on CPU Accelerate runs fp16 as plain fp32
  resume      bf16 (and fp16 on GPU): N steps uninterrupted (the lm / lm_fp16 run) against N/2
              steps, a checkpoint, and N/2 more in a new process; the training loss at every
              logged step (exact on CPU; within --resume-tol on GPU)
  latentwire  jobs/latentwire_smoke.yaml with a ~300M-parameter Llama decoder built from a config
              (no download) in bf16 on GPU: step time, peak memory per device, text/embeddings
              agreement, and `orch check`'s verdict on the job's own checks
  ddp         with 2+ GPUs: the lm run as 2 processes under `accelerate launch`, scaling efficiency

Steady-state figures are medians over the log intervals after the first `warm` ones (which hold
torch.compile and the allocator's warm-up). A benchmark, not a test: nothing asserts a speed; a
section that fails is recorded with its error and log tail, and the exit status is then 1.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.record.atomicio import atomic_write_json, read_json, read_jsonl  # noqa: E402
from orchestrator.spec.schema import spec_from_data, spec_to_yaml  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
SQUAD = SHARED / "squad" / "dev-v2.0-sample.json"

# Dense (no sparsity) bf16 = fp16 tensor-core peaks in TFLOPS, by a substring of the device name; the
# first match wins. This script's own table, so its MFU is a check on the trainer's, not a copy.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0),
)
# The LatentWire decoder on GPU: a Llama of about 300M parameters (24 x 12.85M + the embedding).
LATENTWIRE_DECODER = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "num_key_value_heads": 16}
RUN_TIMEOUT_S = 600  # one run; a GPU run here takes a minute or two (a time-out is an error, not a wait)
SKIPPABLE = ("lm_eager", "lm_fp16", "resume_bf16", "resume_fp16", "latentwire", "ddp")
RESUME_TOL_GPU = 1e-2  # two GPU runs of one spec need not be bitwise equal (non-deterministic CUDA kernels)


# ----------------------------------------------------------------------------- what to run
@dataclass
class Plan:
    mode: str  # "gpu" or "cpu"
    device: str  # train.device of every spec
    n_layer: int
    n_head: int
    d_model: int
    block: int
    batch: int
    steps: int
    log_every: int
    warm: int  # log intervals left out of the steady-state medians
    eval_batches: int
    tokenizer: dict[str, Any]
    data: dict[str, Any]
    data_label: str
    compile: bool
    cpus: int
    jobs: int
    budget_s: float
    resume_tol: float
    squad: Path
    peak_tflops: Optional[float]
    skip: set[str] = field(default_factory=set)

    @property
    def half(self) -> int:
        return self.steps // 2


def make_plan(args: argparse.Namespace) -> Plan:
    gpu = torch.cuda.is_available() and not args.cpu
    if args.data:
        data, label = {"path": str(Path(args.data).resolve())}, str(Path(args.data).resolve())
    elif SHAKESPEARE.is_file():
        data, label = {"path": str(SHAKESPEARE)}, f"tinyshakespeare ({SHAKESPEARE})"
    else:
        data, label = {"builtin": "grammar"}, "generated (orch's builtin grammar corpus)"
    sizes = dict(n_layer=12, n_head=12, d_model=768, block=1024, batch=16, steps=200, log_every=10, warm=2,
                 eval_batches=4, tokenizer={"type": "bpe", "vocab_size": 50257}, cpus=8, jobs=1, budget_s=420.0) \
        if gpu else \
        dict(n_layer=2, n_head=2, d_model=64, block=64, batch=8, steps=40, log_every=5, warm=1,
             eval_batches=2, tokenizer={"type": "char"}, cpus=1, jobs=2, budget_s=0.0)
    for key in ("steps", "batch", "jobs", "budget_s"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if sizes["steps"] < 4 * sizes["log_every"]:
        raise SystemExit(f"--steps must be at least {4 * sizes['log_every']} (4 log intervals)")
    return Plan(mode="gpu" if gpu else "cpu", device="cuda" if gpu else "cpu", data=data, data_label=label,
                compile=gpu if args.compile is None else args.compile,
                resume_tol=(RESUME_TOL_GPU if gpu else 0.0) if args.resume_tol is None else args.resume_tol,
                squad=Path(args.squad) if args.squad else SQUAD, peak_tflops=args.peak_tflops,
                skip=set(args.skip or ()), **sizes)


def lm_spec(plan: Plan, name: str, precision: str, compile: bool, max_steps: int, gpus: int = 0) -> dict[str, Any]:
    """The `lm` spec of every run here: nanoGPT's GPT-2 recipe (lr 6e-4, beta2 0.95, clip 1, no dropout).

    `decay_steps` is the full N, so the first half of a resume check has the schedule of the whole run."""
    return {
        "name": name, "trainer": "lm", "backend": "local", "seed": 1337,
        "description": "bench/gpu_check.py",
        "model": {"arch": "gpt2", "n_layer": plan.n_layer, "n_head": plan.n_head, "d_model": plan.d_model,
                  "max_seq_len": plan.block, "dropout": 0.0},
        "tokenizer": plan.tokenizer, "data": plan.data,
        "train": {"max_steps": max_steps, "decay_steps": plan.steps, "batch_size": plan.batch, "lr": 6e-4,
                  "min_lr": 6e-5, "warmup_steps": plan.steps // 10, "weight_decay": 0.1, "beta2": 0.95,
                  "grad_clip": 1.0, "precision": precision, "compile": compile, "log_every": plan.log_every,
                  "device": plan.device},
        "eval": {"every": plan.half, "batches": plan.eval_batches, "diversity": False},
        "checkpoint": {"every": 10**9, "keep_last": 1, "keep_best": False, "hf_format": False},
        "resources": {"cpus_per_task": plan.cpus, "gpus_per_node": gpus, "mem": "32G", "time": "00:30:00"},
        "retry": {"max_attempts": 1},
    }


# ----------------------------------------------------------------------------- running orch
class SectionError(Exception):
    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else ""


class Bench:
    """The temporary results tree, the `orch` CLI against it, and the clock of the whole check."""

    def __init__(self, plan: Plan, work: Path, keep: bool) -> None:
        self.plan, self.work, self.keep = plan, work, keep
        self.results = work / "results"
        (work / "specs").mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.errors: list[str] = []
        self._print = threading.Lock()
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                    "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def say(self, line: str) -> None:
        with self._print:
            print(f"[{time.monotonic() - self.t0:6.1f} s] {line}", flush=True)

    def orch(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", "--results", str(self.results), *args],
                              cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)

    def submit(self, spec_file: Path, *sets: str) -> Path:
        """`orch submit SPEC --set ... --wait --json`; the run folder, or SectionError with its log tail."""
        args = [a for s in sets for a in ("--set", s)]
        try:
            res = self.orch("submit", str(spec_file), *args, "--wait", "--json")
            stdout = res.stdout
        except subprocess.TimeoutExpired as exc:  # the job runs on without `--wait`: cancel it
            stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            res = None
        start = stdout.find("[")
        if start < 0:
            raise SectionError(f"orch submit {spec_file.name} failed", res.stderr[-3000:] if res else "time-out")
        rows, _ = json.JSONDecoder().raw_decode(stdout[start:])
        run = Path(rows[0]["run_dir"])
        if res is None:
            self.orch("cancel", str(run))
            raise SectionError(f"run {run.name} took more than {RUN_TIMEOUT_S} s: cancelled",
                               _tail(run / "logs" / "training.log"))
        if res.returncode != 0:
            raise SectionError(f"run {run.name} did not complete (orch submit exited {res.returncode})",
                               _tail(run / "logs" / "stderr-1.log") or res.stderr[-3000:])
        return run

    def submit_lm(self, spec: dict[str, Any]) -> Path:
        path = self.work / "specs" / f"{spec['name']}.yaml"
        path.write_text(spec_to_yaml(spec_from_data(spec, "gpu_check")))
        self.say(f"{spec['name']}: orch submit ({spec['train']['precision']}, "
                 f"compile {'on' if spec['train']['compile'] else 'off'}, {spec['train']['max_steps']} steps)")
        return self.submit(path)

    def continue_run(self, run: Path, max_steps: int) -> None:
        """Raise the run's step budget and start its next attempt as a job does: `python -m trainers RUN_DIR`."""
        spec = yaml.safe_load((run / "spec.yaml").read_text())
        spec["train"]["max_steps"] = max_steps
        (run / "spec.yaml").write_text(spec_to_yaml(spec_from_data(spec, "gpu_check")))
        env = {**self.env, "ORCH_RUN_DIR": str(run), "ORCH_ATTEMPT": "2", "ORCH_RESULTS_ROOT": str(self.results)}
        self.say(f"{run.parent.name}: attempt 2 (python -m trainers) to step {max_steps}")
        res = subprocess.run([sys.executable, "-m", "trainers", str(run)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        if res.returncode != 0:
            raise SectionError(f"the resumed attempt of {run.name} exited {res.returncode}", res.stderr[-3000:])

    def drop_checkpoints(self, run: Path) -> None:
        if not self.keep:
            shutil.rmtree(run / "ckpt", ignore_errors=True)

    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one section: skipped (with why), its figures, or its error; never raises."""
        if name in self.plan.skip:
            return {"skipped": "--skip"}
        spent = time.monotonic() - self.t0
        if self.plan.budget_s and spent > self.plan.budget_s:
            self.say(f"{name}: skipped, the {self.plan.budget_s:.0f} s budget is spent")
            return {"skipped": f"time budget: {spent:.0f} s spent of --budget-s {self.plan.budget_s:.0f}"}
        t = time.monotonic()
        try:
            out = fn()
        except SectionError as exc:
            out = {"error": str(exc), "log_tail": exc.tail}
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' figures
            out = {"error": f"{type(exc).__name__}: {exc}", "log_tail": traceback.format_exc()[-3000:]}
        if "error" in out:
            self.errors.append(name)
            self.say(f"{name}: ERROR {out['error']}")
        elif "skipped" not in out:
            self.say(f"{name}: done")
        out["section_seconds"] = round(time.monotonic() - t, 1)
        return out


# ----------------------------------------------------------------------------- reading a run
def _by_step(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Diagnostics by step; a step logged twice (redone after a resume) keeps the last record."""
    return {int(r["step"]): r for r in records}


def _median(values: list[Any]) -> Optional[float]:
    values = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def _r(x: Optional[float], nd: int = 4) -> Optional[float]:
    return None if x is None else round(x, nd)


def hand_flops(plan: Plan, vocab: int) -> tuple[int, float]:
    """(N, training FLOPs per token) by hand from the architecture: GPT-2 blocks (attention qkv + proj,
    4x MLP, two LayerNorms, biases) + final LayerNorm + the tied lm_head (the logits matmul), without
    the position embedding (as nanoGPT's get_num_params); 6N + 12 * L * H * Q * T (H * Q = d_model)."""
    L, d, T = plan.n_layer, plan.d_model, plan.block
    n = L * (12 * d * d + 13 * d) + 2 * d + vocab * d
    return n, 6.0 * n + 12.0 * L * d * T


def peak_for(plan: Plan, name: str) -> tuple[Optional[float], str]:
    if plan.peak_tflops:
        return plan.peak_tflops * 1e12, "--peak-tflops"
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12, f"table: {key} {tflops:g} TFLOPS bf16 dense"
    return None, f"no peak known for {name!r} (pass --peak-tflops)"


def run_figures(plan: Plan, run: Path, flops: float, peak: Optional[float]) -> dict[str, Any]:
    """Steady-state throughput, MFU (orch's and by hand), memory and losses of a finished run."""
    diags = [r for _, r in sorted(_by_step(read_jsonl(run / "logs" / "train_diagnostics.jsonl")).items())]
    if not diags:
        raise SectionError(f"{run.name} wrote no train diagnostics", _tail(run / "logs" / "training.log"))
    steady = diags[plan.warm:] or diags[-1:]
    metrics = read_json(run / "eval" / "metrics.json", default={}) or {}
    world = int(metrics.get("world_size") or 1)
    tps = _median([r.get("tokens_per_sec") for r in steady])
    mems = [r["mem_peak_gb"] for r in diags if r.get("mem_peak_gb")]
    scales = [r["loss_scale"] for r in diags if "loss_scale" in r]
    return {
        "run": run.name,
        "tokens_per_sec": _r(tps, 1),
        "step_time_ms": _r(1000 * _median([r.get("step_time") for r in steady]), 2),
        "mfu_orch": _r(_median([r.get("mfu") for r in steady])),  # logged by the trainer on CUDA only
        "mfu_hand": _r(flops * tps / world / peak) if peak and tps else None,
        "achieved_tflops_per_device": _r(flops * tps / world / 1e12, 3) if tps else None,
        "mem_peak_gb": max(mems, key=max) if mems else None,  # per device, torch.cuda.max_memory_allocated
        "loss_first": _r(diags[0].get("loss")), "loss_last": _r(diags[-1].get("loss")),
        "val_loss": _r((metrics.get("final") or {}).get("val_loss")),
        "steps": metrics.get("steps"), "world_size": world, "train_seconds": metrics.get("train_seconds"),
        "log_intervals": len(diags), "steady_intervals": len(steady),
        "loss_scale": {"first": scales[0], "last": scales[-1], "min": min(scales)} if scales else None,
    }


def compare_resume(straight: Path, resumed: Path, half: int, tol: float) -> dict[str, Any]:
    """The training loss at every logged step: uninterrupted vs interrupted at `half` and resumed."""
    a = _by_step(read_jsonl(straight / "logs" / "train_diagnostics.jsonl"))
    b = _by_step(read_jsonl(resumed / "logs" / "train_diagnostics.jsonl"))
    if sorted(a) != sorted(b):
        raise SectionError(f"logged steps differ: {sorted(a)} vs {sorted(b)}")
    diff = {s: abs(a[s]["loss"] - b[s]["loss"]) for s in a}
    before = [d for s, d in diff.items() if s <= half]
    after = [d for s, d in diff.items() if s > half]
    va = {r["step"]: r["val_loss"] for r in read_jsonl(straight / "eval" / "metrics_history.jsonl")}
    vb = {r["step"]: r["val_loss"] for r in read_jsonl(resumed / "eval" / "metrics_history.jsonl")}
    log = (resumed / "logs" / "training.log").read_text(errors="replace")
    resumed_ok = f"resumed from step-{half:08d}" in log
    exact = all(a[s]["loss"] == b[s]["loss"] for s in a) and all(va[s] == vb.get(s) for s in va)
    worst = max(after) if after else 0.0
    return {
        "straight_run": straight.name, "resumed_run": resumed.name, "resumed_at_step": half,
        "resumed_from_checkpoint": resumed_ok, "steps_compared": len(diff),
        "max_abs_diff_before_resume": max(before) if before else 0.0,  # two processes, identical work
        "max_abs_diff_after_resume": worst,
        "val_loss_abs_diff": {str(s): abs(va[s] - vb[s]) for s in va if s in vb},
        "exact": exact, "tolerance": tol, "ok": resumed_ok and (exact or worst <= tol),
        # fp16: the GradScaler's scale is part of the checkpoint, so it must match step for step too
        "loss_scales_equal": all(a[s].get("loss_scale") == b[s].get("loss_scale") for s in a)
        if any("loss_scale" in r for r in a.values()) else None,
    }


# ----------------------------------------------------------------------------- the sections
def env_info(plan: Plan) -> dict[str, Any]:
    import accelerate
    import transformers

    info: dict[str, Any] = {
        "mode": plan.mode, "host": socket.gethostname(), "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "cpu_count": os.cpu_count(),
    }
    if plan.device == "cuda":
        devices = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                            "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
        info.update(device_name=devices[0]["name"], gpu_count=len(devices), gpus=devices,
                    cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
    else:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None) if Path("/proc/cpuinfo").is_file() else None
        info.update(device_name=model or platform.processor() or "cpu", gpu_count=0,
                    cuda_available=torch.cuda.is_available())
    return info


def token_cache(bench: Bench) -> tuple[np.ndarray, dict[str, Any]]:
    """The training tokens the lm runs used: the one entry of the results tree's token cache."""
    entries = sorted((bench.results / ".cache" / "tokens").glob("*/meta.json"))
    if len(entries) != 1:
        raise SectionError(f"expected one token cache entry, found {len(entries)}")
    meta = json.loads(entries[0].read_text())
    return np.memmap(entries[0].parent / "train.bin", dtype=np.dtype(meta["dtype"]), mode="r"), meta


def plain_loop(plan: Plan, tokens: np.ndarray, vocab: int, flops: float, peak: Optional[float]) -> dict[str, Any]:
    """nanoGPT's training loop by hand on the same transformers GPT-2 class, batch, bf16 autocast and
    compile, with fused AdamW, cosine lr and the host sync at the same log steps; no orch code runs."""
    from transformers import AutoModelForCausalLM, GPT2Config

    device = torch.device(plan.device)
    if device.type == "cpu":
        torch.set_num_threads(plan.cpus)  # the trainer's threads: resources.cpus_per_task
    torch.manual_seed(1337)
    config = GPT2Config(vocab_size=vocab, n_positions=plan.block, n_embd=plan.d_model, n_layer=plan.n_layer,
                        n_head=plan.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), fused=True)
    step_model = torch.compile(model) if plan.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(1337)
    B, T, warmup = plan.batch, plan.block, plan.steps // 10

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(tokens) - T, (B,), generator=gen).tolist()
        x = torch.from_numpy(np.stack([tokens[i:i + T] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([tokens[i + 1:i + 1 + T] for i in ix]).astype(np.int64))
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    def lr_at(step: int) -> float:
        if step < warmup:
            return 6e-4 * (step + 1) / (warmup + 1)
        ratio = (step - warmup) / max(1, plan.steps - warmup)
        return 6e-5 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (6e-4 - 6e-5)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stamps, losses = [time.perf_counter()], []
    for step in range(plan.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x, y = get_batch()
        with autocast:
            logits = step_model(input_ids=x).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % plan.log_every == 0:
            losses.append(loss.item())  # the host sync the trainer makes at its log steps
            stamps.append(time.perf_counter())
    rates = [plan.log_every * B * T / (b - a) for a, b in zip(stamps, stamps[1:])][plan.warm:]
    tps = statistics.median(rates)
    mem = round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.type == "cuda" else None
    del step_model, model, opt
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"tokens_per_sec": round(tps, 1), "step_time_ms": round(1000 * B * T / tps, 2),
            "mfu_hand": _r(flops * tps / peak) if peak else None,
            "achieved_tflops_per_device": _r(flops * tps / 1e12, 3), "mem_peak_gb": mem,
            "loss_first": _r(losses[0]), "loss_last": _r(losses[-1]), "steady_intervals": len(rates)}


def latentwire(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    if not plan.squad.is_file():
        return {"skipped": f"the SQuAD sample {plan.squad} is absent (--squad PATH)"}
    sets = [f"data.path={plan.squad}", "name=gpu-check-latentwire", "retry.max_attempts=1"]
    if plan.device == "cuda":
        sets += ["train.device=cuda", "train.precision=bf16", "model.dtype=auto", "resources.cpus_per_task=8",
                 "model.decoder_config=" + json.dumps(LATENTWIRE_DECODER)]
    else:  # the smoke job's own sizes, cut as tests/integration/test_latentwire_smoke.py cuts them
        sets += ["data.train_samples=128", "data.eval_samples=12", "train.max_steps=10", "eval.every=10",
                 "checkpoint.every=10", "eval.collapse_patience=5"]
    bench.say("latentwire: orch submit jobs/latentwire_smoke.yaml" + (" (~300M Llama decoder, bf16)"
                                                                       if plan.device == "cuda" else ""))
    run = bench.submit(REPO / "jobs" / "latentwire_smoke.yaml", *sets)
    diags = [r for _, r in sorted(_by_step(read_jsonl(run / "logs" / "train_diagnostics.jsonl")).items())]
    steady = diags[plan.warm:] or diags[-1:]
    metrics = read_json(run / "eval" / "metrics.json", default={}) or {}
    params = (read_json(run / "run.json", default={}) or {}).get("params") or {}
    check = bench.orch("check", str(run), "--json")
    verdict = json.loads(check.stdout) if check.stdout.strip().startswith("{") else {}
    mems = [r["mem_peak_gb"] for r in diags if r.get("mem_peak_gb")]
    bench.drop_checkpoints(run)
    return {
        "run": run.name, "decoder_params": params.get("decoder_frozen"), "trainable_params": params.get("trainable"),
        "precision": "bf16 decoder, bf16 autocast" if plan.device == "cuda" else "fp32",
        "step_time_ms": _r(1000 * _median([r.get("step_time") for r in steady]), 2),
        "tokens_per_sec": _r(_median([r.get("tokens_per_sec") for r in steady]), 1),
        "mem_peak_gb": max(mems, key=max) if mems else None,
        "text_embeddings_agreement": metrics.get("text_embeddings_agreement"),
        "latent_compression": (metrics.get("latent") or {}).get("compression"),
        "eval_seconds": {m: (metrics.get(m) or {}).get("seconds") for m in
                         ("text", "embeddings", "anchor", "latent", "token_budget") if m in metrics},
        "steps": metrics.get("steps"), "train_seconds": metrics.get("train_seconds"),
        "checks": {"passed": verdict.get("passed"), "summary": verdict.get("summary")},
    }


# ----------------------------------------------------------------------------- the whole check
def run_all(plan: Plan, bench: Bench) -> dict[str, Any]:
    report: dict[str, Any] = {"schema": 1, "env": env_info(plan)}
    env = report["env"]
    peak, peak_source = peak_for(plan, env["device_name"]) if plan.device == "cuda" else (None, "CPU: no peak")
    bench.say(f"{plan.mode} mode on {env['device_name']} (x{max(1, env['gpu_count'])}); torch {env['torch']}, "
              f"CUDA {env['cuda']}; results tree {bench.results}")
    precision = "bf16"
    box: dict[str, Any] = {}

    # Phase 1, alone on the machine: the lm trainer, then the same model as a plain loop.
    def lm() -> dict[str, Any]:
        run = bench.submit_lm(lm_spec(plan, "gpu-check-lm", precision, plan.compile, plan.steps,
                                      gpus=1 if plan.device == "cuda" else 0))
        tokens, meta = token_cache(bench)
        n_hand, flops = hand_flops(plan, int(meta["vocab_size"]))
        box.update(run=run, tokens=tokens, meta=meta, flops=flops)
        from trainers.lm.models import build_config, flops_per_token

        orch_params = (read_json(run / "run.json", default={}) or {}).get("params") or {}
        model_spec = spec_from_data(lm_spec(plan, "x", precision, False, 1), "gpu_check").model
        config = build_config(model_spec, int(meta["vocab_size"]))
        orch_flops = flops_per_token(config, int(orch_params.get("non_embedding", 0)), plan.block)
        report["config"] = {
            "model": f"gpt2 {plan.n_layer} layers x {plan.n_head} heads, d_model {plan.d_model}, block {plan.block}",
            "vocab_size": meta["vocab_size"], "tokenizer": plan.tokenizer["type"], "data": plan.data_label,
            "train_tokens": meta.get("train_tokens"), "batch_size": plan.batch,
            "tokens_per_step": plan.batch * plan.block, "steps": plan.steps, "log_every": plan.log_every,
            "warm_intervals_left_out": plan.warm, "precision": precision, "compile": plan.compile,
            "params_orch": orch_params, "params_hand": n_hand,
            "flops_per_token": {"orch": orch_flops, "hand": flops, "orch_over_hand": _r(orch_flops / flops, 6)},
            "peak_flops": peak, "peak_source": peak_source,
        }
        bench.drop_checkpoints(run)
        return run_figures(plan, run, flops, peak)

    report["lm"] = bench.section("lm", lm)
    if "run" not in box:
        report.setdefault("config", {})
        report["errors"] = bench.errors
        return report  # nothing else can be compared with
    flops = box["flops"]

    def plain() -> dict[str, Any]:
        bench.say("plain: the same model as a plain PyTorch loop in this process")
        out = plain_loop(plan, box["tokens"], int(box["meta"]["vocab_size"]), flops, peak)
        lm_tps = report["lm"].get("tokens_per_sec")
        out["overhead_ratio"] = _r(lm_tps / out["tokens_per_sec"], 3) if lm_tps else None  # lm / plain
        out["target"] = 0.95
        return out

    report["plain"] = bench.section("plain", plain)

    # Phase 2: the rest, `jobs` at a time (1 on GPU: every figure has the device to itself).
    runs: dict[str, Path] = {"gpu-check-lm": box["run"]}  # spec name -> run folder

    def figures(name: str, prec: str, compile: bool) -> dict[str, Any]:
        run = bench.submit_lm(lm_spec(plan, name, prec, compile, plan.steps,
                                      gpus=1 if plan.device == "cuda" else 0))
        runs[name] = run
        bench.drop_checkpoints(run)
        return run_figures(plan, run, flops, peak)

    def eager() -> dict[str, Any]:
        if not plan.compile:
            return {"skipped": "compile is off (the CPU default: inductor takes minutes there; --compile forces it)"}
        out = figures("gpu-check-eager", precision, False)
        out["compile_speedup"] = _r(report["lm"]["tokens_per_sec"] / out["tokens_per_sec"], 3) \
            if report["lm"].get("tokens_per_sec") and out.get("tokens_per_sec") else None
        return out

    def fp16() -> dict[str, Any]:
        out = figures("gpu-check-fp16", "fp16", False)  # eager, beside lm_eager: one cold compile less
        out["grad_scaler"] = out["loss_scale"] is not None
        if not out["grad_scaler"]:
            out["note"] = "no GradScaler: Accelerate runs fp16 on CPU as plain fp32 (no autocast)"
        return out

    def resume(prec: str) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            if prec == "fp16" and plan.device == "cpu":
                return {"skipped": "CPU: Accelerate runs fp16 as plain fp32 (no autocast, no GradScaler), so "
                                   "the fp16 resume (loss scale in the checkpoint) is checked on GPU only"}
            compile = plan.compile and prec == "bf16"  # as its uninterrupted run: lm (bf16) or lm_fp16 (eager)
            run = bench.submit_lm(lm_spec(plan, f"gpu-check-resume-{prec}", prec, compile, plan.half,
                                          gpus=1 if plan.device == "cuda" else 0))
            bench.continue_run(run, plan.steps)
            runs[f"resume-{prec}"] = run
            bench.drop_checkpoints(run)
            return {"resumed_run": run.name}
        return go

    def ddp() -> dict[str, Any]:
        if plan.device != "cuda":
            return {"skipped": "CPU mode: DDP scaling is measured on a machine with 2+ GPUs"}
        if torch.cuda.device_count() < 2:
            return {"skipped": f"{torch.cuda.device_count()} GPU: DDP needs 2"}
        run = bench.submit_lm(lm_spec(plan, "gpu-check-ddp", precision, plan.compile, plan.steps, gpus=2))
        bench.drop_checkpoints(run)
        out = run_figures(plan, run, flops, peak)
        one = report["lm"].get("tokens_per_sec")
        out["scaling_efficiency"] = _r(out["tokens_per_sec"] / (2 * one), 3) if one and out["tokens_per_sec"] else None
        out["launcher"] = "accelerate launch --multi_gpu --num_processes 2 (orch's job wrapper)"
        return out

    tasks: dict[str, Callable[[], dict[str, Any]]] = {
        "lm_eager": eager, "resume_bf16": resume("bf16"), "lm_fp16": fp16, "latentwire": lambda: latentwire(bench),
        "resume_fp16": resume("fp16"), "ddp": ddp,
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, plan.jobs)) as pool:
        done = {name: pool.submit(bench.section, name, fn) for name, fn in tasks.items()}
        out = {name: f.result() for name, f in done.items()}
    report["lm_eager"], report["lm_fp16"] = out["lm_eager"], out["lm_fp16"]
    report["resume"] = {}
    for prec, straight in (("bf16", "gpu-check-lm"), ("fp16", "gpu-check-fp16")):
        got = out[f"resume_{prec}"]
        if "resumed_run" in got and straight in runs:
            try:
                got.update(compare_resume(runs[straight], runs[f"resume-{prec}"], plan.half, plan.resume_tol))
            except SectionError as exc:
                got.update(error=str(exc), log_tail=exc.tail)
            if "error" in got or not got["ok"]:
                bench.errors.append(f"resume_{prec}")
        elif "resumed_run" in got:
            got["skipped"] = f"no uninterrupted {prec} run to compare with (see lm_{prec})"
        report["resume"][prec] = got
    report["latentwire"], report["ddp"] = out["latentwire"], out["ddp"]
    report["errors"] = bench.errors
    return report


# ----------------------------------------------------------------------------- printing
def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    if isinstance(v, float):
        return (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}") + unit
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v) + unit
    return f"{v}{unit}"


def summary(report: dict[str, Any]) -> str:
    env, cfg = report["env"], report.get("config", {})
    lines = [f"gpu_check ({env['mode']} mode): {env['device_name']} x{max(1, env['gpu_count'])}; torch {env['torch']}, "
             f"CUDA {env['cuda']}, transformers {env['transformers']}, accelerate {env['accelerate']}; {env['host']}"]
    if cfg:
        fl = cfg["flops_per_token"]
        lines.append(f"model {cfg['model']}, vocab {cfg['vocab_size']} ({cfg['tokenizer']}), "
                     f"{cfg['params_orch'].get('total', 0):,} params; "
                     f"batch {cfg['batch_size']} x {cfg['steps']} steps; "
                     f"data {cfg['data']}")
        lines.append(f"FLOPs/token orch {fl['orch']:.4g}, hand {fl['hand']:.4g} (ratio {fl['orch_over_hand']}); "
                     f"peak: {cfg['peak_source']}")

    def row(name: str, sec: dict[str, Any], *keys: tuple[str, str, str]) -> None:
        if "skipped" in sec and len(sec) <= 2:
            lines.append(f"  {name:<12} skipped: {sec['skipped']}")
            return
        if "error" in sec:
            lines.append(f"  {name:<12} ERROR: {sec['error']}")
            return
        lines.append(f"  {name:<12} " + "; ".join(f"{label} {_fmt(sec.get(k), unit)}" for k, label, unit in keys))

    tput = (("tokens_per_sec", "tok/s", ""), ("step_time_ms", "step", " ms"), ("mfu_orch", "MFU orch", ""),
            ("mfu_hand", "MFU hand", ""), ("mem_peak_gb", "peak mem", " GB"), ("loss_last", "loss", ""))
    for name in ("lm", "lm_eager", "lm_fp16", "plain", "ddp"):
        if name in report:
            extra = {"lm_eager": (("compile_speedup", "compile speed-up", "x"),),
                     "lm_fp16": (("grad_scaler", "GradScaler", ""),),
                     "plain": (("overhead_ratio", "lm/plain", "x"),),
                     "ddp": (("scaling_efficiency", "scaling", ""),)}.get(name, ())
            row(name, report[name], *tput, *extra)
    for prec, sec in (report.get("resume") or {}).items():
        row(f"resume {prec}", sec, ("ok", "ok", ""), ("exact", "exact", ""),
            ("max_abs_diff_before_resume", "diff before", ""), ("max_abs_diff_after_resume", "after", ""),
            ("tolerance", "tol", ""), ("steps_compared", "steps", ""))
    if "latentwire" in report:
        row("latentwire", report["latentwire"], ("decoder_params", "decoder", " params"),
            ("step_time_ms", "step", " ms"), ("mem_peak_gb", "peak mem", " GB"),
            ("text_embeddings_agreement", "text/embeddings agreement", ""))
    if report.get("errors"):
        lines.append(f"errors in: {', '.join(report['errors'])}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"),
                    help="the JSON report (default ./gpu_check.json)")
    ap.add_argument("--cpu", action="store_true", help="reduced sizes on CPU (the default without CUDA)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the lm runs (default: on for GPU, off for CPU)")
    ap.add_argument("--steps", type=int, help="steps of each lm run (default 200 GPU, 40 CPU)")
    ap.add_argument("--batch", type=int, help="micro-batch (default 16 GPU, 8 CPU)")
    ap.add_argument("--data", help="a text file (default: ../shared/data/tinyshakespeare, else generated text)")
    ap.add_argument("--squad", help=f"the SQuAD sample for latentwire (default {SQUAD})")
    ap.add_argument("--jobs", type=int, help="sections after lm + plain run this many at a time (default 1 GPU, 2 CPU)")
    ap.add_argument("--budget-s", dest="budget_s", type=float,
                    help="skip sections not started after this many seconds (default 420 GPU, none CPU)")
    ap.add_argument("--resume-tol", dest="resume_tol", type=float,
                    help=f"max |loss difference| after a resume (default {RESUME_TOL_GPU} GPU, 0 = exact CPU)")
    ap.add_argument("--peak-tflops", dest="peak_tflops", type=float, help="the device's bf16 peak, if not in the table")
    ap.add_argument("--skip", action="append", metavar="SECTION", choices=SKIPPABLE,
                    help=f"leave a section out: {', '.join(SKIPPABLE)} (repeatable)")
    ap.add_argument("--workdir", type=Path, help="keep the results tree here (default: a temporary folder, removed)")
    args = ap.parse_args()
    plan = make_plan(args)
    work = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    bench = Bench(plan, work, keep=args.workdir is not None)
    try:
        report = run_all(plan, bench)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - bench.t0, 1)
    report["command"] = [Path(sys.argv[0]).name, *sys.argv[1:]]
    atomic_write_json(args.out, report)
    print(summary(report))
    print(f"total {report['seconds']} s; figures in {args.out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
