"""Fabricate realistic finished run folders (through RunPaths) for preserve/compare tests.

The files match what the lm trainer and the job wrapper write: run.json with attempts,
spec.yaml, provenance.json, checks.json, metrics.json (final/best), metrics history with
length-generalization keys, train diagnostics, logs, and checkpoint folders of random bytes in the
trainer's layout (orchestrator/record/checkpoints.py: step-<N>/, best/, hf-final/, sealed manifests).
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.record import checkpoints as ck
from orchestrator.record.paths import RunPaths

REPO = Path(__file__).resolve().parents[2]


def orch(*args: str, results: Path | None = None, cwd: Path | None = None, check: bool = False,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "orchestrator"]
    if results is not None:
        cmd += ["--results", str(results)]
    res = subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"orch {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(results: Path, name: str = "quick", run_id: str | None = None, *, lr: float = 1e-3,
             d_model: int = 64, steps: int = 200, ckpt_bytes: int = 64 * 1024, state: str = "COMPLETED",
             sweep_point: dict[str, Any] | None = None, lengths: bool = True, seed: int = 0) -> RunPaths:
    """A finished run with everything a preserve/compare would look at."""
    run_id = run_id or f"{name}-20250314-101500-{seed:04x}"
    p = RunPaths(results / name / run_id)
    p.make_dirs()
    spec = {
        "name": name, "trainer": "lm", "description": "fabricated for tests", "seed": 1337 + seed,
        "model": {"arch": "gpt2", "n_layer": 2, "n_head": 2, "d_model": d_model, "max_seq_len": 64},
        "tokenizer": {"type": "char"}, "data": {"builtin": "arith", "val_fraction": 0.1},
        "train": {"max_steps": steps, "lr": lr, "batch_size": 8},
        "eval": {"every": 50, "length_multiples": [2, 4] if lengths else []},
        "checkpoint": {"every": 100, "metric": "val_loss", "mode": "min"},
        "preserve": {"auto": False, "dest": "preserved_data", "checkpoints": "best"},
        "env": {"WANDB_API_KEY": "abc123-secret-value", "OMP_NUM_THREADS": "1"},
    }
    p.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
    attempts = [{"n": 1, "job_id": "4242", "state": "PREEMPTED", "exit_code": 75, "started_at": "2025-03-14T10:15:02+00:00",
                 "ended_at": "2025-03-14T10:16:00+00:00"},
                {"n": 2, "job_id": "4250", "state": state, "exit_code": 0 if state == "COMPLETED" else 1,
                 "started_at": "2025-03-14T10:17:00+00:00", "ended_at": "2025-03-14T10:20:00+00:00"}]
    rec = {"run_id": run_id, "name": name, "state": state, "created_at": "2025-03-14T10:15:00+00:00",
           "ended_at": "2025-03-14T10:20:00+00:00", "backend": "local", "attempts": attempts,
           "sweep_point": sweep_point or {}, "stop_reason": "max_steps"}
    if state != "COMPLETED":
        rec["failure"] = {"class": "oom", "evidence": ["CUDA out of memory. Tried to allocate 2.00 GiB"]}
    p.run_json.write_text(json.dumps(rec, indent=2))
    p.provenance.write_text(json.dumps({"command": ["orch", "submit", "jobs/quick.yaml"], "hostname": "node01",
                                        "git": {"commit": "0123abcd", "dirty": False},
                                        "env": {"OMP_NUM_THREADS": "1", "HF_TOKEN": "hf_" + "x" * 30}}))
    history, diags = [], []
    scale = 1.0 + 10 * lr + 64 / d_model * 0.1
    for step in range(0, steps + 1, 50):
        val = 3.0 * math.exp(-step / (steps * scale)) + 1.0
        row = {"step": step, "train_loss": val - 0.05, "val_loss": val, "val_ppl": math.exp(val)}
        if lengths:
            row["val_ppl@2x"] = math.exp(val) * 1.3
            row["val_ppl@4x"] = math.exp(val) * 2.1
        history.append(row)
    for step in range(0, steps + 1, 10):
        diags.append({"step": step, "loss": 3.0 * math.exp(-step / (steps * scale)) + 1.0, "lr": lr * (1 - step / (steps + 1)),
                      "grad_norm": 1.0 + 0.5 * math.sin(step), "tokens_per_sec": 12000.0 + step,
                      "mem_peak_mb": 900.0 + step / 10, "pred_unique_frac": 0.4 + step / (4 * steps),
                      "dominant_prediction": "the"})
    _jsonl(p.metrics_history, history)
    _jsonl(p.diagnostics, diags)
    best = min(history, key=lambda r: r["val_loss"])
    p.metrics.write_text(json.dumps({"final": history[-1], "best": best,
                                     "n_params": 7_300_000}))
    _jsonl(p.predictions, [{"prompt": "1+1=", "prediction": "2", "target": "2"}])
    _jsonl(p.samples, [{"prompt": "The", "text": "The quick brown fox"}])
    p.training_log.write_text("".join(f"step {r['step']} loss {r['loss']:.4f}\n" for r in diags))
    p.stdout(1).write_text("attempt 1\n")
    p.checks.write_text(json.dumps({"run_id": run_id, "passed": True, "results": [
        {"name": "val_loss < 2.5", "kind": "spec", "severity": "error", "status": "pass", "detail": "val_loss=1.2"}]}))
    p.heartbeat.write_text("{}")
    (p.root / ".job.lock").write_text("")  # a hidden lock file, as a live job leaves
    (p.root / ".env").write_text("HF_TOKEN=hf_secretsecretsecretsecret\n")
    (p.root / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    rnd = __import__("random").Random(seed)

    def ckpt(folder: str, kind: str, step: int) -> None:
        d = ck.tmp_dir(p.ckpt, folder)
        (d / "model").mkdir(parents=True, exist_ok=True)
        (d / "model" / "model.safetensors").write_bytes(rnd.randbytes(ckpt_bytes))
        (d / "model" / "config.json").write_text(json.dumps({"n_embd": d_model, "bos_token": "<s>"}))
        if kind == "step":
            (d / "state").mkdir()
            (d / "state" / "optimizer.bin").write_bytes(rnd.randbytes(1024))
            (d / "state" / "random_states_0.pkl").write_bytes(rnd.randbytes(256))
            (d / "trainer_state.json").write_text(json.dumps({"step": step, "world_size": 1}))
        (d / "spec.yaml").write_text(p.spec.read_text())
        ck.seal(d, kind=kind, step=step, tokens_seen=step * 512, metrics={"val_loss": 1.0 + 1.0 / (step + 1)})
        ck.publish(d, p.ckpt / folder)

    for step in (steps // 2, steps):
        ckpt(ck.step_name(step), "step", step)
    ckpt(ck.BEST, "best", steps // 2)
    ckpt(ck.FINAL, "final", steps)
    torn = p.ckpt / ".tmp-step-00099999"
    torn.mkdir()
    (torn / "partial.bin").write_bytes(b"x" * 100)
    os.symlink("/etc", p.ckpt / "escape")
    (p.tokenizer).mkdir(exist_ok=True)
    (p.tokenizer / "tokenizer.json").write_text(json.dumps({"type": "char", "vocab": list("abc")}))
    return p


def sigkill_mid_copy(proc: subprocess.Popen[Any], dest: Path, pattern: str, timeout: float = 120) -> bool:
    """SIGKILL a running `orch preserve` once a file matching `pattern` (under dest) has started to
    be written; False when the copy finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        hits = list(dest.glob(pattern)) if dest.exists() else []
        if hits and hits[0].stat().st_size > 0:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.wait()
    return False
