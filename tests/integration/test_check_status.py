"""`orch status`'s CHECKS column and `orch check` agree, on real runs: a completed quickstart with
checks, a failed run, and a run whose check names a metric it never logged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

QUICKSTART = REPO / "jobs" / "quickstart.yaml"
FAULTY = "tests.fixtures.faulty:FaultyTrainer"


def _faulty(tmp: Path, name: str, fail: str, checks: list) -> Path:
    spec = {"name": name, "trainer": FAULTY, "seed": 3,
            "train": {"max_steps": 12, "log_every": 2, "lr": 0.05, "min_lr": 0.0, "device": "cpu"},
            "eval": {"every": 6}, "checkpoint": {"every": 6, "hf_format": False}, "retry": {"max_attempts": 1},
            "env": {"OMP_NUM_THREADS": "1"}, "config": {"fail": fail, "at_step": 3, "step_sleep": 0.0},
            "checks": checks}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _checks_cells(table: str) -> dict[str, str]:
    """run id -> the CHECKS cell of `orch status`'s table (columns are left-justified)."""
    header, *rows = table.splitlines()
    start, end = header.index("CHECKS"), header.index("NOTE")
    return {row.split()[0]: row[start:end].strip() for row in rows}


@pytest.mark.skipif(not QUICKSTART.is_file(), reason="jobs/quickstart.yaml is absent")
def test_status_checks_column_is_orch_checks_summary(orch, tmp_path: Path) -> None:
    qs = tmp_path / "qs.yaml"
    qs.write_text(f"extends: {QUICKSTART}\nname: qs-checked\ntrain: {{max_steps: 40}}\n"
                  "eval: {every: 20, batches: 2, prompts: []}\ncheckpoint: {every: 20}\n"
                  "checks: ['best.val_loss < 10', {expr: 'val_ppl < 1.01', severity: warn}]\n")
    failed = _faulty(tmp_path, "broken", "user_error", ["val_loss < 100"])
    unknown = _faulty(tmp_path, "unknown-metric", "none", ["val_loss < 100", "best.my_score > 1", "val_lss < 1"])
    orch("submit", str(qs), str(failed), str(unknown), "--wait", check=1, timeout=900)  # one run fails
    runs = {r["name"]: r for r in orch.json("status")}
    assert {n: r["state"] for n, r in runs.items()} == {"qs-checked": "COMPLETED", "broken": "FAILED",
                                                        "unknown-metric": "COMPLETED"}
    assert all(r["checks"] is None for r in runs.values())  # not judged yet: status shows "-"

    verdicts = {}
    for name, r in runs.items():
        res = orch("check", r["run_id"], "--json", check=False)
        verdicts[name] = json.loads(res.stdout)
        assert res.returncode == (0 if verdicts[name]["passed"] else 1)
        text = orch("check", r["run_id"], check=False).stdout
        assert text.splitlines()[0] == f"{r['run_id']}  [{r['state']}]  {verdicts[name]['summary']}"

    assert verdicts["qs-checked"]["summary"] == "7/8 pass"  # the warn-level check fails; the heartbeat skip is not counted
    assert verdicts["broken"]["summary"].endswith(" FAILED") and "builtin:run_completed" in verdicts["broken"]["failing"]
    assert verdicts["unknown-metric"]["summary"] == "7/9 pass FAILED"
    assert set(verdicts["unknown-metric"]["failing"]) == {"best.my_score > 1", "val_lss < 1"}
    for v in verdicts.values():  # the numbers are the judged results, in both places
        judged = [x for x in v["results"] if x["status"] in ("pass", "fail", "unknown", "error")]
        assert v["summary"].startswith(f"{sum(x['status'] == 'pass' for x in judged)}/{len(judged)} pass")

    status = {r["name"]: r for r in orch.json("status")}
    cells = _checks_cells(orch("status", "--wide").stdout)
    for name, v in verdicts.items():
        assert status[name]["checks"] == v["summary"], name
        assert cells[status[name]["run_id"]] == v["summary"], name
