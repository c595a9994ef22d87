"""`bench/gpu_check.py` in CPU mode, as a user runs it: every section of its JSON is there, with numbers.

The GPU figures themselves (MFU, CUDA memory, compile speed-up, DDP) are null or skipped on CPU and
are not asserted; what is asserted is that the script drives orch end to end (orch submit, the lm
trainer, a resumed attempt, the latentwire smoke job, `orch check`) and reports what they wrote.
About a minute on 2 cores (longer when the machine is busy); the timeout is only a bound.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "dev-v2.0-sample.json"  # the script's default


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_cpu_report(r: dict[str, Any], squad_present: bool) -> None:
    env, cfg = r["env"], r["config"]
    assert env["mode"] == "cpu" and env["gpu_count"] == 0 and env["device_name"]
    assert env["torch"] and env["transformers"] and env["accelerate"]
    assert _number(r["seconds"]) and r["errors"] == []
    # FLOPs per token: orch's function and the hand count (6N + 12 L d T) agree exactly for gpt2
    flops = cfg["flops_per_token"]
    assert _number(flops["orch"]) and flops["orch"] == flops["hand"] > 0
    d, block = 64, 64
    assert cfg["params_hand"] == cfg["params_orch"]["total"] - block * d  # nanoGPT's N: no position embedding
    assert cfg["peak_flops"] is None and cfg["compile"] is False and cfg["precision"] == "bf16"

    lm = r["lm"]
    for key in ("tokens_per_sec", "step_time_ms", "achieved_tflops_per_device", "loss_first", "loss_last",
                "val_loss", "train_seconds"):
        assert _number(lm[key]) and lm[key] > 0, (key, lm[key])
    assert lm["steps"] == cfg["steps"] and lm["steady_intervals"] == lm["log_intervals"] - 1
    assert lm["loss_last"] < lm["loss_first"]
    assert lm["mfu_orch"] is None and lm["mfu_hand"] is None and lm["mem_peak_gb"] is None  # CUDA only

    plain = r["plain"]
    assert _number(plain["tokens_per_sec"]) and _number(plain["overhead_ratio"]) and plain["target"] == 0.95
    assert plain["loss_last"] < plain["loss_first"]
    assert "compile is off" in r["lm_eager"]["skipped"]

    fp16 = r["lm_fp16"]
    assert _number(fp16["tokens_per_sec"]) and fp16["grad_scaler"] is False and "fp32" in fp16["note"]

    resume = r["resume"]["bf16"]
    assert resume["ok"] is True and resume["exact"] is True and resume["resumed_from_checkpoint"] is True
    assert resume["resumed_at_step"] == cfg["steps"] // 2
    assert resume["steps_compared"] == cfg["steps"] // cfg["log_every"]
    assert resume["max_abs_diff_after_resume"] == 0.0 and resume["tolerance"] == 0.0
    assert "GPU only" in r["resume"]["fp16"]["skipped"]

    lw = r["latentwire"]
    if squad_present:
        assert lw["text_embeddings_agreement"] == 1.0 and lw["checks"]["passed"] is True
        for key in ("decoder_params", "trainable_params", "step_time_ms", "tokens_per_sec", "latent_compression"):
            assert _number(lw[key]) and lw[key] > 0, (key, lw[key])
        assert set(lw["eval_seconds"]) == {"text", "embeddings", "anchor", "latent", "token_budget"}
    else:
        assert "absent" in lw["skipped"]
    assert "2+ GPUs" in r["ddp"]["skipped"]


def test_gpu_check_cpu_mode_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu", "--out", str(out),
                          "--workdir", str(tmp_path / "work")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    report = json.loads(out.read_text())
    check_cpu_report(report, SQUAD.is_file())
    assert "gpu_check (cpu mode)" in res.stdout and f"figures in {out}" in res.stdout
    assert "resume bf16  ok yes; exact yes" in res.stdout
