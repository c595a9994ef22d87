"""`orch monitor --once` over a mixed tree: lm, latentwire and plug-in-trainer runs plus 20 damaged
run folders. The pass exits 0, acts on every healthy run, names every damaged folder, and a second
pass repeats no action.

The plug-in-trainer runs are real jobs (`tests.fixtures.faulty:FaultyTrainer` on the local
backend); the lm and latentwire runs are finished runs fabricated with their real spec files and
logs (an lm run from `runfactory`, a latentwire run from `jobs/latentwire_smoke.yaml`).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.record.atomicio import read_json, read_jsonl
from orchestrator.record.record import now_iso
from orchestrator.spec.schema import spec_from_run
from tests.conftest import REPO, Orch, wait_until
from tests.integration.damagedtree import CASES, GROUP, make_damaged
from tests.integration.test_reliability_damaged import healthy_lm, names_every

FAULTY = "tests.fixtures.faulty:FaultyTrainer"
OOM_TRACEBACK = """\
Traceback (most recent call last):
  File "/work/trainers/latentwire/trainer.py", line 180, in train_step
    out = self.decoder(inputs_embeds=embeds, attention_mask=mask)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 1.06 GiB is free.
"""


def fabricate(results: Path, name: str, run_id: str, spec: dict[str, Any], state: str,
              stderr: str = "") -> Path:
    """A finished run folder as the job wrapper leaves it: spec.yaml, run.json, logs."""
    run_dir = results / name / run_id
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    att = {"n": 1, "backend": "local", "job_id": "999999@1", "reason": "submit", "submitted_at": now_iso(),
           "started_at": now_iso(), "ended_at": now_iso(), "state": state, "exit_code": 0 if state == "COMPLETED" else 1}
    rec = {"run_id": run_id, "name": name, "state": state, "backend": "local", "attempts": [att],
           "exit_code": att["exit_code"], "ended_at": now_iso(), "trainer": spec["trainer"],
           "total_steps": spec["train"]["max_steps"]}
    (run_dir / "run.json").write_text(json.dumps(rec, indent=2))
    (run_dir / "logs" / "stderr-1.log").write_text(stderr)
    (run_dir / "logs" / "stdout-1.log").write_text("# orch attempt 1\n")
    spec_from_run(run_dir / "spec.yaml")  # a valid spec of its trainer, as orch submit wrote it
    return run_dir


def latentwire_spec(**over: Any) -> dict[str, Any]:
    spec = yaml.safe_load((REPO / "jobs" / "latentwire_smoke.yaml").read_text())
    spec["data"]["path"] = "/nonexistent/squad-sample.json"  # a resubmitted attempt fails at once
    spec.update(over)
    return spec


def faulty_spec(tmp: Path, name: str, **config: Any) -> Path:
    spec = {"name": name, "trainer": FAULTY, "seed": 3,
            "train": {"max_steps": 60, "log_every": 2, "lr": 0.05, "min_lr": 0.0, "device": "cpu"},
            "eval": {"every": 10, "at_end": True}, "checkpoint": {"every": 10, "keep_last": 2, "hf_format": False},
            "retry": {"on": ["user_error"], "max_attempts": 2, "backoff": 0},
            "env": {"OMP_NUM_THREADS": "1"}, "config": {"fail": "none", "step_sleep": 0.0, **config}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def state_of(run_dir: Path) -> str:
    return (read_json(run_dir / "run.json") or {}).get("state", "")


def test_monitor_pass_over_lm_latentwire_plugin_and_20_damaged_runs(orch: Orch, tmp_path: Path) -> None:
    results = orch.results
    lm_done = [healthy_lm(results, "lm", "lm-a", 1), healthy_lm(results, "lm", "lm-b", 2)]
    lm_data = healthy_lm(results, "lm", "lm-dataerr", 3)
    rec = json.loads((lm_data / "run.json").read_text())
    rec["state"] = "FAILED"
    rec["attempts"][-1].update(state="FAILED", exit_code=1, ended_at=now_iso())
    (lm_data / "run.json").write_text(json.dumps(rec))
    (lm_data / "logs" / "stderr-2.log").write_text(
        "Traceback (most recent call last):\n  File \"/x/trainers/lm/data.py\", line 65, in load\n"
        "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 3: invalid start byte\n")
    lw_done = fabricate(results, "lw", "lw-done", latentwire_spec(), "COMPLETED")
    plug_done = Path(orch.json("submit", str(faulty_spec(tmp_path, "plug-ok")))[0]["run_dir"])
    plug_fail = Path(orch.json("submit", str(faulty_spec(tmp_path, "plug-crash", fail="user_error", at_step=2,
                                                         step_sleep=0.3)))[0]["run_dir"])
    damaged = make_damaged(results)
    wait_until(lambda: state_of(plug_done) == "COMPLETED", 180, "the plug-in run to complete", plug_done)
    wait_until(lambda: state_of(plug_fail) == "FAILED", 180, "the plug-in run to fail", plug_fail)

    res = orch("monitor", "--once")
    assert "Traceback" not in res.stderr, res.stderr
    names_every(res.stderr, results, damaged)
    events = read_jsonl(results / "events.jsonl")
    by_run: dict[str, list[str]] = {}
    for e in events:
        by_run.setdefault(e.get("run_id", "-"), []).append(e["event"])
    done = ("completed", "checks_failed")
    for run_dir in [*lm_done, lw_done, plug_done]:
        assert len(by_run.get(run_dir.name, [])) == 1 and by_run[run_dir.name][0] in done, (run_dir.name, by_run)
    assert by_run[lm_data.name] == ["failed", "not_retried"], by_run
    assert [e["class"] for e in events if e.get("run_id") == lm_data.name][0] == "data_error"
    assert by_run[plug_fail.name] == ["failed", "retried"], by_run
    assert "monitor_error" not in {e["event"] for e in events}, events
    assert not any(GROUP in json.dumps(e) for e in events)  # damaged folders are named, not acted on
    assert len((read_json(plug_fail / "run.json") or {})["attempts"]) == 2

    res = orch("monitor", "--once")  # the retried attempt trains (step_sleep keeps it going): nothing to do
    assert res.stdout == "" and "Traceback" not in res.stderr, (res.stdout, res.stderr)
    names_every(res.stderr, results, damaged)
    assert read_jsonl(results / "events.jsonl") == events
    orch("cancel", plug_fail.name)


def test_latentwire_oom_with_halve_batch_is_retried_in_its_own_schema(orch: Orch, tmp_path: Path) -> None:
    """A latentwire run that failed with OOM under retry.oom_halve_batch: the pass must not crash,
    and the run is retried with half the batch, its spec still a latentwire spec. (The halving itself
    is owned by `Monitor.halve_batch`, fixed on another branch; until that merge this test fails at
    the `oom_halved` assertion, while the pass already exits 0 and names the problem.)"""
    results = orch.results
    lm = healthy_lm(results, "lm", "lm-a", 1)
    retry = {"on": ["oom"], "max_attempts": 3, "backoff": 0, "oom_halve_batch": True}
    lw = fabricate(results, "lw", "lw-oom", latentwire_spec(retry=retry), "FAILED", stderr=OOM_TRACEBACK)
    damaged = {k: v for k, v in make_damaged(results).items() if k in ("truncated", "empty-list")}
    for run_id in set(CASES) - set(damaged):  # two damaged folders are enough here
        shutil.rmtree(results / GROUP / run_id)
    res = orch("monitor", "--once")
    assert "Traceback" not in res.stderr, res.stderr
    names_every(res.stderr, results, damaged)
    events = [e for e in read_jsonl(results / "events.jsonl") if e.get("run_id") == lw.name]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "failed" and events[0]["class"] == "oom", events
    assert any(e["event"] in ("completed", "checks_failed") for e in read_jsonl(results / "events.jsonl")
               if e.get("run_id") == lm.name)
    # Until the halve_batch fix merges, the pass survives and names it: monitor_error "could not handle
    # this run: ValidationError: ... (at monitor.py:...)" instead of the two events below.
    assert kinds == ["failed", "oom_halved", "retried"], events
    spec = spec_from_run(lw / "spec.yaml")
    assert type(spec).__name__ == "LatentWireSpec" and spec.train.batch_size == 4 and spec.train.grad_accum == 2
    assert spec.model.latent_len == 8  # its own sections survive the rewrite
    time.sleep(0.5)
    orch("cancel", lw.name, check=False)
