"""`orch plan` as a user runs it: arithmetic of a sweep, and a real probe of a tiny run."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import Orch, write_spec


def test_plan_of_the_scaling_sweep_without_running_anything(orch: Orch) -> None:
    plan = orch.json("plan", "jobs/wikitext103_scaling.yaml", "--compute", "1e18")
    (spec,) = plan["specs"]
    runs = spec["runs"]
    assert len(runs) == 9 and all(r["probe"] is None for r in runs)
    params = sorted(r["arithmetic"]["params"] for r in runs)
    assert params[0] == 814_800 and params[-1] == 19_249_920
    assert all(r["arithmetic"]["tokens"] == 36_622 * 8_192 for r in runs)
    assert all(r["memory"]["fits"] and r["memory"]["device"] == "GPU of 80G" for r in runs)
    assert "model.d_model=256 model.n_layer=2" in spec["sweep"]
    assert plan["chinchilla_optimal"] == {"params": 91_287_093, "tokens": 1_825_741_858}
    text = orch("plan", "jobs/wikitext103_scaling.yaml", "--set", "train.batch_size=4096", "--device-mem", "24G").stdout
    assert "DOES NOT FIT" in text and "train.grad_accum=" in text


def test_probe_measures_real_steps_and_projects_the_budget(orch: Orch, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "tiny.yaml", """
name: tiny-plan
trainer: lm
model: {arch: gpt2, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 32}
data: {builtin: arith}
train: {max_steps: 400, batch_size: 4, device: cpu}
eval: {every: 100, batches: 2}
checkpoint: {every: 200, hf_format: false}
resources: {cpus_per_task: 1, time: "00:10:00"}
retry: {max_attempts: 1}
""")
    orch.env["OMP_NUM_THREADS"] = "1"
    plan = orch.json("plan", str(spec), "--probe", "4")
    (run,) = plan["specs"][0]["runs"]
    probe, proj = run["probe"], run["projection"]
    assert probe["steps"] == 4 and probe["step_time"] > 0 and probe["overhead_seconds"] > 0
    assert probe["peak_memory_kind"] == "rss" and probe["peak_memory_bytes"] > 10e6
    assert proj["steps"] == 400
    assert proj["total_seconds"] == proj["wall_seconds"] + proj["requeues"] * probe["overhead_seconds"]
    assert [t["multiple"] for t in run["table"]] == [1, 5, 10, 50]
    walls = [t["wall_seconds"] for t in run["table"]]
    assert walls == sorted(walls) and walls[0] == proj["total_seconds"]
    assert run["table"][3]["tokens"] == 50 * 400 * 4 * 32
    assert not (orch.results / ".probes").exists() or not any((orch.results / ".probes").iterdir())
    assert orch("plan", str(spec), "--probe", "1", check=2).stderr.startswith("error: --probe needs")
