"""`jobs/latentwire_smoke.yaml` through the real CLI, and the two-stage pipeline (an `lm` run's decoder).

Skips with a reason when the shared SQuAD sample is absent. Sizes are cut with --set so each run
takes well under a minute on 2 cores.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.record.atomicio import read_jsonl

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "data" / "squad" / "dev-v2.0-sample.json"
MODES = ("text", "embeddings", "anchor", "adapter", "latent", "token_budget")
SMALL = ["--set", "data.train_samples=128", "--set", "data.eval_samples=12", "--set", "train.max_steps=10",
         "--set", "eval.every=10", "--set", "checkpoint.every=10", "--set", "eval.collapse_patience=5"]


@pytest.fixture
def squad_sample() -> Path:
    if not SAMPLE.is_file():
        pytest.skip(f"the shared SQuAD sample {SAMPLE} is absent")
    return SAMPLE


def _run_dir(orch, name: str) -> Path:  # type: ignore[no-untyped-def]
    [row] = [r for r in orch.json("status") if r["name"] == name]
    return Path(row["run_dir"])


def _assert_latentwire_outputs(run: Path) -> dict:
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for mode in MODES:
        m = metrics[mode]
        for key in ("f1", "em", "first_token_acc", "first_token_top5_acc", "nll", "compression", "seconds",
                    "prediction_diversity", "dominant_share", "dominant_predictions"):
            assert key in m, (mode, key)
    assert metrics["text_embeddings_agreement"] == 1.0
    assert metrics["latent"]["compression"] > 1.0
    preds = read_jsonl(run / "eval" / "predictions.jsonl")
    assert {p["mode"] for p in preds} == set(MODES)
    assert all({"id", "question", "gold_answers", "prediction", "mode"} <= set(p) for p in preds)
    diags = read_jsonl(run / "logs" / "train_diagnostics.jsonl")
    assert diags, "no training diagnostics"
    for key in ("grad_norm", "first_acc", "first_acc_top5", "tf_loss", "first_loss", "kce_loss", "kd_loss",
                "prediction_diversity", "dominant_predictions", "dominant_share"):
        assert key in diags[-1], key
    assert sum(n for _, n in diags[-1]["dominant_predictions"]) <= diags[-1]["batch_size_seen"]
    assert len(read_jsonl(run / "eval" / "metrics_history.jsonl")) >= 1
    return metrics


def test_smoke_job_through_the_cli(orch, squad_sample: Path) -> None:  # type: ignore[no-untyped-def]
    orch("submit", "jobs/latentwire_smoke.yaml", "--set", f"data.path={squad_sample}", *SMALL, "--wait",
         timeout=300)
    run = _run_dir(orch, "latentwire-smoke")
    _assert_latentwire_outputs(run)
    log = (run / "logs" / "training.log").read_text()
    assert "eval step 10:" in log and "latent" in log
    assert "WARNING: mode collapse" in log  # a random decoder: the alarm must fire within patience
    # `orch check` evaluates the spec's checks (exit 0: no error-severity check failed)
    res = orch("check", run.name, "--json")
    verdict = json.loads(res.stdout)
    by_name = {r["name"]: r for r in verdict["results"]}
    assert "text_embeddings_agreement == 1" in by_name and "latent.compression >= 4" in by_name
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    collapsed = metrics["latent"]["dominant_share"] > 0.5  # a random decoder: usually one first token
    assert by_name["latent.dominant_share <= 0.5"]["passed"] is (not collapsed), by_name["latent.dominant_share <= 0.5"]
    assert (run / "checks.json").is_file()


def test_two_stage_pipeline_lm_then_latentwire(orch, squad_sample: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Pretrain a tiny Llama with `lm` on SQuAD contexts, then train latentwire (with LoRA) against its hf-final model."""
    squad = json.loads(squad_sample.read_text())
    contexts = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    corpus = tmp_path / "contexts.txt"
    corpus.write_text("\n\n".join(contexts))
    lm = tmp_path / "pretrain.yaml"
    lm.write_text(f"""\
name: lw-decoder
trainer: lm
model: {{arch: llama, n_layer: 2, n_head: 4, d_model: 64, max_seq_len: 256}}
tokenizer: {{type: bpe, vocab_size: 1024}}
data: {{path: {corpus}}}
train: {{max_steps: 30, batch_size: 8, lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5, log_every: 10, device: cpu}}
eval: {{every: 30, batches: 2}}
checkpoint: {{every: 30, keep_last: 1}}
resources: {{cpus_per_task: 2}}
""")
    orch("submit", str(lm), "--wait", timeout=300)
    orch("submit", "jobs/latentwire_smoke.yaml", "--set", f"data.path={squad_sample}", *SMALL,
         "--set", "model.decoder=null", "--set", "model.decoder_config=null",
         "--set", "model.decoder_from_run=lw-decoder", "--set", "model.lora.rank=4", "--wait", timeout=300)
    run = _run_dir(orch, "latentwire-smoke")
    metrics = _assert_latentwire_outputs(run)
    log = (run / "logs" / "training.log").read_text()
    assert "decoder run lw-decoder" in log and "hf-final" in log
    assert "LoRA rank 4 on ['q_proj', 'v_proj']" in log and metrics["lora"]["rank"] == 4
