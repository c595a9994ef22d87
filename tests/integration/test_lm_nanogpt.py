"""`model.arch: nanogpt` through the lm trainer as a job runs it: train, checkpoint, resume, generate."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from orchestrator.record.atomicio import read_jsonl
from orchestrator.record.tree import ResultsRoot
from orchestrator.spec.schema import spec_from_data, spec_to_yaml

REPO = Path(__file__).resolve().parents[2]
SPEC = {
    "name": "nano", "trainer": "lm", "seed": 7,
    "model": {"arch": "nanogpt", "n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 32},
    "tokenizer": {"type": "char"}, "data": {"builtin": "arith"},
    "train": {"max_steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 1, "device": "cpu"},
    "eval": {"every": 6, "batches": 2, "prompts": ["12+"], "max_new_tokens": 8},
    "checkpoint": {"every": 6, "keep_last": 2},
}


def _train(run_dir: Path) -> None:
    env = {**os.environ, "ORCH_RUN_DIR": str(run_dir), "ORCH_ATTEMPT": "1", "OMP_NUM_THREADS": "1",
           "ORCH_RESULTS_ROOT": str(run_dir.parent.parent), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "trainers", str(run_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_nanogpt_trains_checkpoints_resumes_and_generates(tmp_path: Path) -> None:
    from trainers.framework.checkpoint import load_for_generation
    from trainers.framework.generation import generate

    spec = spec_from_data(SPEC, "test")
    run = ResultsRoot(tmp_path / "results").create_run(spec.name, {"backend": "local"})
    run.paths.spec.write_text(spec_to_yaml(spec))
    _train(run.paths.root)
    losses = {r["step"]: r["loss"] for r in read_jsonl(run.paths.diagnostics)}
    assert sorted(losses) == list(range(1, 13)) and losses[12] < losses[1]
    assert [r["completion"] for r in read_jsonl(run.paths.samples)]  # generated at the end
    model, tok, info = load_for_generation(run.paths.root)  # the Hugging Face folder, through AutoModel
    assert type(model).__name__ == "NanoGPTForCausalLM" and info.step == 12
    assert generate(model, tok, ["1+1="], max_new_tokens=40, temperature=0) == \
        generate(model, tok, ["1+1="], max_new_tokens=40, temperature=0)
    # A longer budget resumes from the step-12 checkpoint (Accelerate state) and continues.
    spec2 = spec_from_data({**SPEC, "train": {**SPEC["train"], "max_steps": 14}}, "test")
    run.paths.spec.write_text(spec_to_yaml(spec2))
    _train(run.paths.root)
    steps = [r["step"] for r in read_jsonl(run.paths.diagnostics)]
    assert steps[-2:] == [13, 14] and steps.count(1) == 1
