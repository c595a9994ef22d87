"""`model.arch` beyond gpt2/llama/mistral, the way a user runs it: the quickstart through the CLI with
`--set model.arch=...` (three transformers model types, a user's PreTrainedModel class, the TTT model),
trained to COMPLETED, its samples written, and its final checkpoint loaded back by `orch generate`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, Orch

QUICKSTART = REPO / "jobs" / "quickstart.yaml"
TINY = ["--set", "train.max_steps=10", "--set", "eval.every=10", "--set", "eval.batches=2",
        "--set", "checkpoint.every=10", "--set", "train.log_every=5", "--set", "checks=[]",
        "--set", "eval.max_new_tokens=6"]


ARCHS = {"qwen2": "qwen2", "gpt_neox": "gpt_neox", "olmo": "olmo",
         "tests.fixtures.user_model:TinyCausalLM": "tiny_conv_lm", "ttt": "ttt"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Orch, dict[str, Path]]:
    """One `orch submit --wait` of the quickstart swept over the architectures (they run side by side)."""
    base = tmp_path_factory.mktemp("archs")
    (base / "results").mkdir()
    orch = Orch(base / "results", REPO)
    points = ", ".join(f"{{model.arch: '{a}'}}" for a in ARCHS)
    orch("submit", str(QUICKSTART), "--set", f"sweep={{list: [{points}]}}", *TINY, "--wait", timeout=600)
    found = {}
    for run in (orch.results / "quickstart").iterdir():
        if (run / "run.json").is_file():
            found[json.loads((run / "run.json").read_text())["sweep_point"]["model.arch"]] = run
    return orch, found


@pytest.mark.parametrize("arch", list(ARCHS))
def test_quickstart_runs_with_arch(runs: tuple[Orch, dict[str, Path]], arch: str) -> None:
    orch, found = runs
    run = found[arch]
    assert json.loads((run / "run.json").read_text())["state"] == "COMPLETED"
    config = json.loads((run / "ckpt" / "hf-final" / "model" / "config.json").read_text())
    model_type = ARCHS[arch]
    assert config["model_type"] == model_type and config["hidden_size" if model_type != "tiny_conv_lm" else "dim"] == 64
    [sample] = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert sample["prompt"] == "12+34=" and sample["step"] == 10
    if arch == "ttt":  # not a transformers type: the checkpoint must still load by itself, as a user loads it
        out = orch("generate", run.name, "--prompt", "1+1=", "--max-new-tokens", "4", "--temperature", "0",
                   "--json").stdout
        assert json.loads(out.splitlines()[-1])["prompt"] == "1+1="
