"""jobs/window_curriculum.yaml as the researchers run it, shrunk for CPU: its TTT and sliding-window points
(window 16, a few steps, the builtin corpus) through `orch submit --wait`, then `orch compare --plot`.

Checks what the study reads: perplexity at 1x, 2x, 10x and 20x the window (and past the window) at every
evaluation, early stopping as the job configures it, and a comparison figure.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import REPO, Orch

JOB = REPO / "jobs" / "window_curriculum.yaml"


def test_the_job_is_the_researchers_study(orch: Orch) -> None:
    spec = yaml.safe_load(JOB.read_text())
    points = spec["sweep"]["list"]
    assert {(p["model.arch"], p["model.max_seq_len"]) for p in points} == \
        {(a, w) for a in ("ttt", "mistral", "llama") for w in (64, 128)}
    assert spec["eval"]["length_multiples"] == [1, 2, 10, 20]
    assert spec["early_stopping"] == {"metric": "val_loss", "patience": 10, "min_delta": 0.001}
    out = orch("submit", str(JOB), "--dry-run").stdout
    assert "6 run(s) would be submitted" in out


def test_ttt_and_sliding_window_run_and_compare(orch: Orch, tmp_path: Path) -> None:
    sweep = ("{list: [{model.arch: ttt, model.config: {mini_batch_size: 8}}, "
             "{model.arch: mistral, model.sliding_window: 8}]}")
    sets = {"data": "{builtin: arith}", "tokenizer.type": "char", "model.n_layer": "1", "model.d_model": "16",
            "model.n_head": "2", "model.max_seq_len": "16", "train.max_tokens": "null", "train.max_steps": "6",
            "train.batch_size": "4", "train.log_every": "3", "train.device": "cpu", "eval.every": "3",
            "eval.batches": "2", "eval.length_windows": "2", "eval.effective_rank": "false",
            "checkpoint.every": "6", "resources.cpus_per_task": "1", "env": "{OMP_NUM_THREADS: '1'}",
            "sweep": sweep}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    orch("submit", str(JOB), *args, "--wait", timeout=600)
    runs = [p for p in (orch.results / "window-curriculum").iterdir() if (p / "run.json").is_file()]
    assert len(runs) == 2
    for run in runs:
        record = json.loads((run / "run.json").read_text())
        assert record["state"] == "COMPLETED"
        history = [json.loads(line) for line in (run / "eval" / "metrics_history.jsonl").read_text().splitlines()]
        assert [row["step"] for row in history] == [3, 6]
        for row in history:
            for m in (1, 2, 10, 20):
                assert isinstance(row[f"val_ppl@{m}x"], float) and row[f"val_ppl@{m}x"] > 1
            for m in (2, 10, 20):
                assert isinstance(row[f"val_ppl@{m}x_beyond"], float)
    png = tmp_path / "wc.png"
    out = orch("compare", "window-curriculum", "--at", "last", "--plot", str(png)).stdout
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for m in (1, 2, 10, 20):
        assert f"val_ppl@{m}x" in out
    assert "arch=ttt" in out and "arch=mistral" in out
