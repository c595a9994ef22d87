"""The spec language: extends, --set, sweeps, and errors that say file:line and what to do."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import SpecError, SpecErrors, UserError
from orchestrator.spec.schema import format_slurm_time, load_spec, parse_duration, parse_mem

BASE = """\
name: demo
trainer: lm
model: {arch: gpt2, n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 16}
data: {builtin: arith}
train: {max_steps: 10, batch_size: 4}
"""


def spec(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def errors_of(path: Path, **kw) -> str:
    with pytest.raises(UserError) as info:
        load_spec(path, **kw)
    return info.value.render()


def test_minimal_spec_gets_defaults(tmp_path: Path) -> None:
    [r] = load_spec(spec(tmp_path, BASE))
    assert r.spec.name == "demo" and r.spec.model.d_model == 32
    assert r.spec.train.lr == 1e-3 and r.spec.resources.nodes == 1
    assert r.sweep_index is None


def test_extends_deep_merges_relative_to_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    spec(tmp_path, BASE + "eval: {every: 5, batches: 3}\n", "base.yaml")
    child = spec(tmp_path / "sub", "extends: ../base.yaml\nname: child\nmodel: {d_model: 64}\n", "c.yaml")
    [r] = load_spec(child)
    assert r.spec.name == "child"
    assert r.spec.model.d_model == 64 and r.spec.model.n_layer == 2  # merged, not replaced
    assert r.spec.eval.every == 5


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    spec(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    spec(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    assert "cycle" in errors_of(tmp_path / "a.yaml")


def test_set_overrides_are_yaml_typed(tmp_path: Path) -> None:
    [r] = load_spec(spec(tmp_path, BASE), overrides=["train.lr=3e-4", "train.compile=true", "eval.length_multiples=[1, 2]"])
    assert r.spec.train.lr == pytest.approx(3e-4)
    assert r.spec.train.compile is True
    assert r.spec.eval.length_multiples == [1, 2]


def test_grid_and_list_sweeps(tmp_path: Path) -> None:
    text = BASE + "sweep:\n  grid: {model.d_model: [16, 32], train.lr: [0.001, 0.01]}\n  max_parallel: 2\n"
    runs = load_spec(spec(tmp_path, text))
    assert len(runs) == 4
    assert {(r.spec.model.d_model, r.spec.train.lr) for r in runs} == {(16, 0.001), (16, 0.01), (32, 0.001), (32, 0.01)}
    assert [r.sweep_index for r in runs] == [0, 1, 2, 3]
    text = BASE + "sweep:\n  list:\n    - {model.d_model: 16}\n    - {model.d_model: 64, model.n_head: 4}\n"
    runs = load_spec(spec(tmp_path, text, "l.yaml"))
    assert [(r.spec.model.d_model, r.spec.model.n_head) for r in runs] == [(16, 2), (64, 4)]


def test_unknown_key_names_line_and_suggests(tmp_path: Path) -> None:
    text = BASE.replace("train: {max_steps: 10, batch_size: 4}", "train:\n  max_steps: 10\n  learnig_rate: 0.1\n")
    msg = errors_of(spec(tmp_path, text))
    assert "s.yaml:7: train.learnig_rate: unknown key; did you mean 'lr'?" in msg


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    text = BASE + "seed: abc\nresources: {mem: lots, time: soon}\n"
    with pytest.raises(SpecErrors) as info:
        load_spec(spec(tmp_path, text))
    keys = {e.key for e in info.value.errors}
    assert {"seed", "resources.mem", "resources.time"} <= keys


def test_durations_and_memory() -> None:
    assert parse_duration("01:00:00") == 3600
    assert parse_duration("2-00:30:00") == 2 * 86400 + 1800
    assert parse_duration("90m") == 5400 and parse_duration("12h") == 43200 and parse_duration(30) == 30
    assert parse_duration("45") == 45 * 60  # Slurm: a bare number is minutes
    assert format_slurm_time(90061) == "1-01:01:01"
    assert parse_mem("8G") == 8192 and parse_mem("500M") == 500 and parse_mem(1000) == 1000
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_set_on_missing_key_is_rejected_before_loading(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(spec(tmp_path, BASE), overrides=["model.n_layers=3"])
    assert "did you mean 'n_layer'" in info.value.render()
