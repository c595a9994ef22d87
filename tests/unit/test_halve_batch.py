"""The monitor's OOM batch halving validates with the run's own schema and never raises.

It used to re-validate with the base schema, so every latentwire run that OOMed under
`retry.oom_halve_batch: true` crashed `orch monitor --once` on every pass.
(The full pass, where the trainer's schema rejects the halved batch: tests/integration/test_plugin_trainer.py.)
"""
from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.monitor.monitor import Monitor
from orchestrator.record.atomicio import read_jsonl
from orchestrator.record.tree import ResultsRoot, Run
from orchestrator.spec.schema import spec_from_run, spec_to_yaml
from trainers.latentwire.config import LatentWireSpec

LATENTWIRE = {
    "name": "lw", "trainer": "latentwire",
    "model": {"decoder": "meta-llama/Llama-3.1-8B-Instruct", "latent_len": 16},
    "data": {"hub": "squad", "train_samples": 100},
    "loss": {"kd_weight": 0.5},
    "train": {"max_steps": 10, "batch_size": 32, "grad_accum": 2},
    "eval": {"modes": ["latent", "text"]},
    "retry": {"on": ["oom"], "oom_halve_batch": True},
}


def lw_run(root: Path) -> Run:
    run = ResultsRoot(root).create_run("lw", {"state": "FAILED", "backend": "local", "attempts": [{"n": 1}]})
    run.paths.spec.write_text(spec_to_yaml(LatentWireSpec.model_validate(LATENTWIRE)))
    return run


def test_latentwire_batch_is_halved_with_its_own_schema(tmp_path: Path) -> None:
    run = lw_run(tmp_path)
    assert Monitor(tmp_path).halve_batch(run, 1) is True
    spec = spec_from_run(run.paths.spec)
    assert isinstance(spec, LatentWireSpec)
    assert (spec.train.batch_size, spec.train.grad_accum) == (16, 4)  # the same global batch
    assert spec.model.decoder == "meta-llama/Llama-3.1-8B-Instruct" and spec.eval.modes == ["latent", "text"]
    assert spec.loss.kd_weight == 0.5 and spec.data.train_samples == 100  # its sections survive the rewrite
    assert run.reload()["adjustments"][0]["batch_size"] == [32, 16]
    [ev] = read_jsonl(tmp_path / "events.jsonl")
    assert ev["event"] == "oom_halved" and "batch_size 32 -> 16" in ev["summary"]


def test_an_unusable_spec_becomes_an_event_not_an_exception(tmp_path: Path) -> None:
    run = lw_run(tmp_path)
    data = yaml.safe_load(run.paths.spec.read_text())
    data["model"]["latent_len"] = 0  # damaged after submit (hand-edited)
    run.paths.spec.write_text(yaml.safe_dump(data))
    before = run.paths.spec.read_text()
    assert Monitor(tmp_path).halve_batch(run, 1) is False
    [ev] = read_jsonl(tmp_path / "events.jsonl")
    assert ev["event"] == "retry_failed" and ev["class"] == "oom"
    assert "could not halve the batch" in ev["summary"] and "model.latent_len" in ev["summary"]
    assert run.paths.spec.read_text() == before and "adjustments" not in run.reload()

    run.paths.spec.write_text("name: [unclosed\n")
    assert Monitor(tmp_path).halve_batch(run, 1) is False  # not even YAML: still an event
    assert read_jsonl(tmp_path / "events.jsonl")[-1]["event"] == "retry_failed"
