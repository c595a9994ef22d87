"""A user's trainer with its own schema, through the real CLI: validated at submit, run to COMPLETED,
then status / check / monitor / compare / preserve / verify on its run, which has no `lm` sections.

The trainer is `tests.integration.example_trainer:TinyRegressionTrainer` (`config_class = ToySpec`,
a `toy:` section). The OOM-halving case uses `tests.fixtures.sharded_batch:TRAINER`, a torch-free
TrainerInfo whose schema rejects a halved batch.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import Orch

TOY = """\
name: toy
trainer: tests.integration.example_trainer:TinyRegressionTrainer
seed: 5
toy:
  width: {width}
  batch: 16
train: {{max_steps: 40, lr: 0.05, min_lr: 0.0, log_every: 10, device: cpu}}
eval: {{every: 20}}
checkpoint: {{every: 20, keep_last: 1, hf_format: false}}
resources: {{cpus_per_task: 1, time: "00:05:00"}}
retry: {{max_attempts: 1}}
env: {{OMP_NUM_THREADS: "1"}}
checks:
  - expr: best.val_loss < first.val_loss
    message: the linear map is learnable
"""


def toy(tmp_path: Path, width: object = 6, extra: str = "") -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(TOY.format(width=width) + extra)
    return path


@pytest.mark.parametrize("width, extra, needles", [
    (0, "", ["toy.yaml:5", "toy.width", "greater than or equal to 1"]),
    ("wide", "", ["toy.yaml:5", "toy.width", "valid integer"]),
    (6, "model: {d_model: 32}\n", ["toy.yaml:16", "model: unknown key", "known keys:", "toy"]),
])
def test_plugin_schema_is_checked_at_submit(orch: Orch, tmp_path: Path, width: object, extra: str,
                                            needles: list[str]) -> None:
    res = orch("submit", str(toy(tmp_path, width, extra)), check=2)
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr
    assert not any(orch.results.iterdir())


def test_plugin_set_override_is_checked_against_its_schema(orch: Orch, tmp_path: Path) -> None:
    res = orch("submit", str(toy(tmp_path)), "--dry-run", "--set", "toy.widht=3", check=2)
    assert "--set: toy.widht: unknown key; did you mean 'width'?" in res.stderr
    res = orch("submit", str(toy(tmp_path)), "--dry-run", "--set", "toy.width=3")
    assert "width: 3" in res.stdout


def test_plugin_that_cannot_be_imported_is_a_spec_error(orch: Orch, tmp_path: Path) -> None:
    path = toy(tmp_path)
    path.write_text(path.read_text().replace("example_trainer:TinyRegressionTrainer", "no_such:Trainer"))
    res = orch("submit", str(path), check=2)
    assert "toy.yaml:2: trainer: trainer 'tests.integration.no_such:Trainer': cannot import" in res.stderr
    assert "hint: install the package, or submit from the folder that holds it" in res.stderr


def test_plugin_run_end_to_end(orch: Orch, tmp_path: Path) -> None:
    [row] = orch.json("submit", str(toy(tmp_path)), "--wait", timeout=300)
    run_dir = Path(row["run_dir"])
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert spec["toy"] == {"width": 6, "batch": 16} and "model" not in spec and "data" not in spec
    [status] = orch.json("status", row["run_id"])
    assert status["state"] == "COMPLETED" and status["step"] == 40, status
    assert json.loads((run_dir / "run.json").read_text())["trainer"] == spec["trainer"]

    verdict = orch.json("check", row["run_id"])  # one run: one verdict object
    assert verdict["passed"], verdict
    [mine] = [r for r in verdict["results"] if r["kind"] == "spec"]
    assert mine["name"] == "best.val_loss < first.val_loss" and mine["status"] == "pass", verdict
    orch("monitor", "--once")
    events = [json.loads(x) for x in (orch.results / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events if e.get("run_id") == row["run_id"]] == ["completed"], events

    cmp = json.loads(orch("compare", row["run_id"], "--json").stdout)
    assert len(cmp["runs"]) == 1 and "val_loss" in cmp["metrics"]
    dest = tmp_path / "preserved"
    res = orch("preserve", row["run_id"], "--dest", str(dest))
    [bundle] = [p for p in dest.iterdir() if p.is_dir() and str(p) in res.stdout]
    assert "toy.width" in (bundle / "data" / "README.md").read_text()  # the trainer's own section is its configuration
    orch("verify", str(bundle))


def test_oom_halving_rejected_by_the_trainers_schema_does_not_stop_the_pass(orch: Orch, tmp_path: Path) -> None:
    """The monitor re-validates the halved spec with the run's own schema; a rejection is an event."""
    from orchestrator.record.record import now_iso
    from orchestrator.record.tree import ResultsRoot
    from orchestrator.spec.schema import spec_from_data, spec_to_yaml

    spec = spec_from_data({"name": "sharded", "trainer": "tests.fixtures.sharded_batch:TRAINER",
                           "train": {"max_steps": 10, "batch_size": 4},
                           "retry": {"on": ["oom"], "backoff": 0, "oom_halve_batch": True}}, "test")
    run = ResultsRoot(orch.results).create_run("sharded", {
        "state": "FAILED", "backend": "local", "exit_code": 1, "trainer": spec.trainer,
        "attempts": [{"n": 1, "job_id": "1@1", "started_at": now_iso(), "ended_at": now_iso(), "exit_code": 1,
                      "state": "FAILED"}]})
    run.paths.spec.write_text(spec_to_yaml(spec))
    run.paths.stderr(1).write_text("Traceback (most recent call last):\n  File \"t.py\", line 1, in <module>\n"
                                   "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    res = orch("monitor", "--once")
    assert "Traceback" not in res.stderr
    events = [json.loads(x) for x in (orch.results / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["failed", "retry_failed"], events
    assert events[0]["class"] == "oom"
    assert "could not halve the batch" in events[1]["summary"]
    assert "train.batch_size (2) must be a multiple of shards.count (4)" in events[1]["summary"]
    rec = json.loads((run.paths.root / "run.json").read_text())
    assert rec["monitor"]["done_attempt"] == 1 and len(rec["attempts"]) == 1  # handled, not resubmitted
    assert yaml.safe_load(run.paths.spec.read_text())["train"]["batch_size"] == 4  # unchanged
    orch("monitor", "--once")
    assert len((orch.results / "events.jsonl").read_text().splitlines()) == 2  # nothing repeated
