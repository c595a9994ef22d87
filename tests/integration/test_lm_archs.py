"""`model.arch` beyond gpt2/llama/mistral, the way a user runs it: the quickstart through the CLI with
`--set model.arch=...` (three transformers model types, a user's PreTrainedModel class, the TTT model),
trained to COMPLETED, its samples written, and its final checkpoint loaded back by `orch generate`.

The same short runs check the length-generalization figures: `val_ppl@{1,2,4}x` and their `_beyond`
variants in eval/metrics_history.jsonl equal an independent computation over the whole validation
split (its text re-read and re-tokenized here, the final weights loaded from ckpt/hf-final).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import REPO, Orch

WINDOW = 32  # the quickstart's max_seq_len

QUICKSTART = REPO / "jobs" / "quickstart.yaml"
TINY = ["--set", "train.max_steps=10", "--set", "eval.every=10", "--set", "eval.batches=2",
        "--set", "checkpoint.every=10", "--set", "train.log_every=5", "--set", "checks=[]",
        "--set", "eval.max_new_tokens=6", "--set", "eval.length_multiples=[1,2,4]"]


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


def _full_split_ppl(model, tokens, length: int) -> tuple[float, float]:
    """exp(mean NLL) over every consecutive `length`-token window of the split, all positions and >= WINDOW."""
    import torch

    n = (len(tokens) - 1) // length
    seqs = torch.stack([torch.tensor(tokens[i * length : (i + 1) * length + 1]) for i in range(n)])
    nll = []
    with torch.no_grad():
        for chunk in seqs.split(64):
            logp = torch.log_softmax(model(input_ids=chunk[:, :-1]).logits.double(), dim=-1)
            nll.append(-logp.gather(-1, chunk[:, 1:, None]).squeeze(-1))
    every = torch.cat(nll)
    return math.exp(every.mean().item()), math.exp(every[:, WINDOW:].mean().item()) if length > WINDOW else math.nan


@pytest.mark.parametrize("arch", ["qwen2", "ttt"])
def test_length_figures_equal_a_full_split_computation(runs: tuple[Orch, dict[str, Path]], arch: str) -> None:
    import yaml

    from trainers.lm.data import load_text
    from trainers.lm.models import load_pretrained
    from trainers.lm.tokenization import load_tokenizer

    run = runs[1][arch]
    [row] = [json.loads(line) for line in (run / "eval" / "metrics_history.jsonl").read_text().splitlines()]
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    _, val_text = load_text(spec["data"], run)
    tokens = load_tokenizer(run / "tokenizer").encode(val_text)
    model = load_pretrained(str(run / "ckpt" / "hf-final" / "model")).eval()
    for m in (1, 2, 4):
        ppl, beyond = _full_split_ppl(model, tokens, m * WINDOW)
        assert row[f"val_ppl@{m}x"] == pytest.approx(ppl, rel=1e-5)
        if m > 1:
            assert row[f"val_ppl@{m}x_beyond"] == pytest.approx(beyond, rel=1e-5)
        else:
            assert "val_ppl@1x_beyond" not in row
