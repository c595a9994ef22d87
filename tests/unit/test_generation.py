"""Generation: greedy determinism, seeded sampling, windows, and the interactive session on real checkpoints."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers.lm.config import ModelSpec
from trainers.framework.generation import GenerationSettings, InteractiveSession, RunCheckpoints, generate
from trainers.lm.models import build_model
from trainers.lm.tokenization import CharTokenizer

TOK = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .\n")


def _model(arch: str = "llama", window: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch=arch, n_layer=2, n_head=2, d_model=32, max_seq_len=window), TOK.vocab_size)


def test_greedy_is_deterministic_and_ignores_the_seed():
    model = _model()
    first = generate(model, TOK, ["hello", "the"], max_new_tokens=10, temperature=0, seed=0)
    assert first == generate(model, TOK, ["hello", "the"], max_new_tokens=10, temperature=0, seed=123)
    assert all(len(text) == 10 for text in first)


def test_hf_generate_and_the_windowed_loop_agree_greedily():
    model = _model()
    via_hf = generate(model, TOK, ["abc"], max_new_tokens=8, temperature=0, use_hf_generate=True)
    via_loop = generate(model, TOK, ["abc"], max_new_tokens=8, temperature=0, use_hf_generate=False)
    assert via_hf == via_loop


def test_sampling_is_reproducible_by_seed_and_leaves_global_rng_alone():
    model = _model()
    torch.manual_seed(42)
    state = torch.get_rng_state()
    a = generate(model, TOK, ["the"], max_new_tokens=16, temperature=1.0, top_k=10, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # a mid-training sample keeps exact resume exact
    assert a == generate(model, TOK, ["the"], max_new_tokens=16, temperature=1.0, top_k=10, seed=1)
    assert a != generate(model, TOK, ["the"], max_new_tokens=16, temperature=1.0, top_k=10, seed=2)
    assert len(generate(model, TOK, ["the"], max_new_tokens=16, temperature=0.7, top_p=0.9, seed=1)[0]) == 16


def test_gpt2_generates_past_its_window_by_cropping_the_context():
    model = _model("gpt2", window=16)
    (text,) = generate(model, TOK, ["a long prompt longer than the window"], max_new_tokens=40, temperature=0)
    assert len(text) == 40  # nanoGPT-style: the context slides, positions never exceed 16
    assert generate(model, TOK, [""], max_new_tokens=5, temperature=0)[0]  # an empty prompt works too


def _save_run(run_dir: Path) -> dict[int, torch.nn.Module]:
    """A run folder with checkpoints at steps 10 and 20 (and best = step 10), written by the trainer's manager."""
    from accelerate import Accelerator

    from trainers.framework.checkpoint import CheckpointManager

    TOK.save(run_dir / "tokenizer")
    manager = CheckpointManager(run_dir / "ckpt", Accelerator(), keep_last=3, tokenizer_dir=run_dir / "tokenizer")
    models = {10: _model(seed=10), 20: _model(seed=20)}
    for step, model in models.items():
        manager.save(step, model, {"step": step}, tokens_seen=step * 64)
    manager.save_best(10, models[10], tokens_seen=640, metrics={"val_loss": 1.0})
    return models


def test_generation_from_a_checkpoint_is_deterministic_at_temperature_0(tmp_path: Path):
    models = _save_run(tmp_path)
    source = RunCheckpoints(tmp_path)
    entries = source.list()
    assert [(e.step, e.best, e.last) for e in entries] == [(10, False, False), (20, False, True), (10, True, False)]
    model, tok = source.load(entries[1])
    expected = generate(models[20], TOK, ["the"], max_new_tokens=12, temperature=0)
    assert generate(model, tok, ["the"], max_new_tokens=12, temperature=0) == expected
    model, tok = source.load(entries[1])
    assert generate(model, tok, ["the"], max_new_tokens=12, temperature=0) == expected


def test_interactive_session_lists_loads_sets_params_and_generates(tmp_path: Path):
    models = _save_run(tmp_path)
    script = "\n".join(
        ["checkpoints", "params temperature=0 max_new_tokens=6", "the", "load 10", "the", "load 99", "load best", "quit", "never read"]
    )
    out = io.StringIO()
    session = InteractiveSession(RunCheckpoints(tmp_path), io.StringIO(script + "\n"), out, GenerationSettings())
    assert session.run() == 0
    text = out.getvalue()
    assert "loaded checkpoint step 20" in text  # the newest one by default
    assert "step       10" in text and "[last, loaded]" in text and "[best]" in text
    assert "temperature=0.0" in text and "max_new_tokens=6" in text and "non-embedding" in text
    at_20 = generate(models[20], TOK, ["the"], max_new_tokens=6, temperature=0)[0]
    at_10 = generate(models[10], TOK, ["the"], max_new_tokens=6, temperature=0)[0]
    assert "the" + at_20 in text and "the" + at_10 in text
    assert "error: no checkpoint at step 99" in text  # a bad command is reported, the session goes on
    assert text.count("loaded checkpoint step 10") == 2  # `load 10` and `load best`
    assert "never read" not in text


def test_bad_settings_are_rejected():
    settings = GenerationSettings()
    settings.update("top_k", "none")
    assert settings.top_k is None
    with pytest.raises(ValueError, match="unknown setting"):
        settings.update("beam_width", "4")


def test_interactive_params_are_range_checked_as_the_options_are(tmp_path: Path):
    """`params top_p=2` in `orch generate -i` is refused as `--top-p 2` is, and the session goes on."""
    from orchestrator.commands.generate import SETTINGS

    _save_run(tmp_path)
    script = "params top_p=2\nparams temperature=-1\nparams max_new_tokens=0\nparams top_k=0 top_p=0.9\nparams\nquit"
    out = io.StringIO()
    session = InteractiveSession(RunCheckpoints(tmp_path), io.StringIO(script + "\n"), out, GenerationSettings(),
                                 checks=SETTINGS)
    assert session.run() == 0
    text = out.getvalue()
    assert "error: top_p: expected a number in (0, 1], got 2" in text
    assert "error: temperature: expected a number >= 0 (0 = greedy), got -1" in text
    assert "error: max_new_tokens: expected an integer from 1 to 100,000, got 0" in text
    assert session.settings.top_k is None and session.settings.top_p == 0.9  # top_k=0 is off, as --top-k 0
    assert session.settings.temperature == 0.8 and session.settings.max_new_tokens == 200  # refused: unchanged


def test_orch_generate_command_prints_greedy_completions(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from orchestrator.cli import main

    models = _save_run(tmp_path)
    argv = ["generate", str(tmp_path), "--step", "10", "--prompt", "the", "a", "--temperature", "0",
            "--max-new-tokens", "7", "--json", "--device", "cpu"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = generate(models[10], TOK, ["the", "a"], max_new_tokens=7, temperature=0)
    assert [(r["step"], r["prompt"], r["completion"]) for r in lines] == [(10, "the", expected[0]), (10, "a", expected[1])]
    assert main(["generate", str(tmp_path), "--step", "99", "--prompt", "x"]) == 2  # a usage error, no traceback
    assert "no checkpoint at step 99" in capsys.readouterr().err


def test_the_generate_command_module_does_not_import_torch():
    code = "import sys, orchestrator.commands.generate, orchestrator.cli; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
