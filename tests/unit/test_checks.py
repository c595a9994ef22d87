"""Metric resolution (final/best/last, nested keys, NaN), evaluation with severities, built-in health
checks, and `orch check` (exit 0/1, checks.json) on run folders laid out as trainers write them."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest

from orchestrator.record.atomicio import append_jsonl, atomic_write_json
from orchestrator.analysis.metrics import metric_values
from orchestrator.checks.judge import CheckResult, Records, build_metrics, check_run, evaluate_check, summarize
from orchestrator.record.checkpoints import validate
from orchestrator.record.tree import ResultsRoot, Run
from orchestrator.spec.schema import spec_to_yaml
from trainers.lm.config import LMSpec


def make_run(root: Path, checks: list, state: str = "COMPLETED", *, losses=None, evals=None, metrics=None,
             name: str = "demo", **spec_kw) -> Run:
    run = ResultsRoot(root).create_run(name, {"state": state, "attempts": [{"n": 1}]})
    run.paths.spec.write_text(spec_to_yaml(LMSpec(name=name, checks=checks, **spec_kw)))
    for i, loss in enumerate(losses if losses is not None else [3.0, 2.8, 2.5, 2.2, 2.0, 1.9], 1):
        append_jsonl(run.paths.diagnostics, {"step": i * 10, "loss": loss, "grad_norm": 1.0})
    for rec in evals if evals is not None else [{"step": 30, "val_loss": 2.4, "val_ppl": 11.0},
                                                 {"step": 60, "val_loss": 2.1, "val_ppl": 8.2}]:
        append_jsonl(run.paths.metrics_history, rec)
    if metrics is not None:
        atomic_write_json(run.paths.metrics, metrics)
    return run


def table(**kw) -> dict:
    rec = Records(metrics=kw.get("metrics"), history=kw.get("history", []), diagnostics=kw.get("diagnostics", []))
    return build_metrics(rec)


# ----------------------------------------------------------------------------- resolution
def test_final_best_last_names() -> None:
    t = table(history=[{"step": 1, "val_loss": 2.5, "acc": 0.1}, {"step": 2, "val_loss": 1.9, "acc": 0.4},
                       {"step": 3, "val_loss": 2.2, "acc": 0.3}],
              diagnostics=[{"step": 1, "loss": 3.0}, {"step": 3, "loss": 2.0}])
    assert t["val_loss"] == 2.2 and t["last.val_loss"] == 2.2 and t["latest.val_loss"] == 2.2
    assert t["best.val_loss"] == 1.9  # lower is better for losses
    assert t["best.acc"] == 0.4  # higher is better for accuracies
    assert t["first.loss"] == 3.0 and t["loss"] == 2.0 and t["min.val_loss"] == 1.9 and t["max.acc"] == 0.4


def test_metrics_json_wins_for_final_and_best() -> None:
    t = table(metrics={"final": {"val_loss": 2.0, "val_ppl": 7.4}, "best": {"val_loss": 1.8, "step": 50},
                       "latent": {"first_token_acc": 0.31}, "val_ppl_x2": 9.0},
              history=[{"step": 1, "val_loss": 2.5}, {"step": 2, "val_loss": 2.1}])
    assert t["val_loss"] == 2.0 and t["best.val_loss"] == 1.8 and t["val_ppl_x2"] == 9.0
    assert t["latent.first_token_acc"] == 0.31 and t["last.val_loss"] == 2.1


def test_flatten_nested_and_nonfinite() -> None:
    f = metric_values({"a": {"b": {"c": 1}}, "n": None, "i": "inf", "s": "text"})
    assert f["a.b.c"] == 1 and math.isnan(f["n"]) and f["i"] == math.inf and f["s"] == "text"


@pytest.mark.parametrize("expr,status,needle", [
    ("val_ppl < 500", "pass", "val_ppl = 8.2"),
    ("best.val_loss < 1.95", "fail", "best.val_loss = 2.1"),
    ("train_val_gap < 0.10", "pass", "train_val_gap = 0.05"),
    ("first_token_acc >= 0.25", "pass", "latent.first_token_acc = 0.3"),  # unique dotted suffix
    ("0.25 <= latent.first_token_acc <= 0.35", "pass", ""),
    ("val_lss < 2", "unknown", "did you mean val_loss"),
    ("effective_rank < 5", "unknown", "unknown metric"),
    ("nan_metric < 1", "fail", "NaN never passes"),
    ("abs(last.loss - best.val_loss) < 0.5", "pass", ""),
    ("val_ppl / 0 < 1", "error", "ZeroDivisionError"),
    ("name < 3", "error", "TypeError"),
    ("not val_ppl > 500 and val_loss < 3", "pass", ""),
])
def test_evaluate(expr: str, status: str, needle: str) -> None:
    t = table(metrics={"latent": {"first_token_acc": 0.3}, "train_val_gap": 0.05, "nan_metric": None, "name": "x"},
              history=[{"step": 1, "val_loss": 2.1, "val_ppl": 8.2}], diagnostics=[{"step": 1, "loss": 2.0}])
    r = evaluate_check(expr, t, severity="error")
    assert r.status == status, r
    assert needle in r.detail, r.detail
    assert r.blocking == (status != "pass")


def test_best_follows_the_direction_table_not_substrings() -> None:
    rows = [{"step": 1, "mem_peak_gb": 10.0, "system_time": 3.0, "tok_per_s": 100.0, "latent": {"first_token_acc": 0.2},
             "my_score": 5.0, "val_ppl@2x": 9.0},
            {"step": 2, "mem_peak_gb": 12.0, "system_time": 2.0, "tok_per_s": 90.0, "latent": {"first_token_acc": 0.4},
             "my_score": 7.0, "val_ppl@2x": 8.0}]
    t = table(history=rows)
    assert t["best.mem_peak_gb"] == 10.0 and t["best.system_time"] == 2.0 and t["best.tok_per_s"] == 100.0
    assert t["best.latent.first_token_acc"] == 0.4 and t["best.val_ppl@2x"] == 8.0
    assert "best.my_score" not in t and t["max.my_score"] == 7.0  # unknown direction: no guess
    r = evaluate_check("best.my_score > 6", t)
    assert r.status == "unknown" and "is unknown" in r.detail and "metrics: {direction: {my_score: max}}" in r.detail
    t = build_metrics(Records(history=rows), directions={"my_score": "max"})
    assert t["best.my_score"] == 7.0


def test_spec_metrics_direction_reaches_checks(tmp_path: Path) -> None:
    evals = [{"step": 30, "val_loss": 2.4, "my_score": 3.0}, {"step": 60, "val_loss": 2.1, "my_score": 1.0}]
    run = make_run(tmp_path, ["best.my_score >= 3"], evals=evals)
    run.paths.spec.write_text(spec_to_yaml(LMSpec(name="demo", checks=["best.my_score >= 3"],
                                                metrics={"direction": {"my_score": "max"}})))
    by = {r.name: r for r in check_run(run).results}
    assert by["best.my_score >= 3"].status == "pass"
    plain = make_run(tmp_path, ["best.my_score >= 3"], evals=evals, name="plain")
    assert {r.name: r for r in check_run(plain).results}["best.my_score >= 3"].status == "unknown"


def test_summary_counts_judged_checks_only() -> None:
    def res(status: str, severity: str = "error") -> CheckResult:
        return CheckResult("c", "spec", severity, status)

    assert summarize([res("pass"), res("pass"), res("skip", "warn"), res("note", "info")]) == "2/2 pass"
    assert summarize([res("pass"), res("fail", "warn"), res("skip")]) == "1/2 pass"  # a warning does not fail it
    assert summarize([res("pass"), res("unknown"), res("note", "info")]) == "1/2 pass FAILED"
    assert summarize([res("error"), res("skip")]) == "0/1 pass FAILED"
    assert summarize([res("skip", "warn")]) == "nothing judged"


def test_warn_severity_never_blocks() -> None:
    r = evaluate_check("val_loss < 1", {"val_loss": 2.0}, severity="warn")
    assert r.status == "fail" and not r.blocking


# ----------------------------------------------------------------------------- built-ins
def test_builtins_flag_nan_loss_and_no_progress(tmp_path: Path) -> None:
    run = make_run(tmp_path, [], losses=[2.0, 2.1, None, 2.3, 2.4])
    v = check_run(run)
    by = {r.name: r for r in v.results}
    assert by["builtin:finite_loss"].status == "fail" and "step 30" in by["builtin:finite_loss"].detail
    assert by["builtin:loss_decreased"].status == "fail"
    assert not v.passed


def test_builtin_steps_and_corrupt_lines(tmp_path: Path) -> None:
    run = make_run(tmp_path, [], losses=[])
    for s in (10, 20, 15, 30, 5):
        append_jsonl(run.paths.diagnostics, {"step": s, "loss": 1.0})
    with open(run.paths.diagnostics, "ab") as fh:
        fh.write(b"{not json}\n{\"step\": 40, \"lo")  # a corrupt line and a torn tail
    v = check_run(run)
    by = {r.name: r for r in v.results}
    assert by["builtin:steps_increasing"].status == "fail"
    assert by["builtin:metrics_present"].status == "fail" and "(1)" in by["builtin:metrics_present"].detail


def test_completed_without_metrics_fails(tmp_path: Path) -> None:
    run = make_run(tmp_path, [], losses=[], evals=[])
    by = {r.name: r for r in check_run(run).results}
    assert by["builtin:metrics_present"].status == "fail" and by["builtin:metrics_present"].blocking


def test_heartbeat_fresh_only_matters_while_running(tmp_path: Path) -> None:
    run = make_run(tmp_path, [], state="RUNNING", monitor={"stall_after": 30})
    atomic_write_json(run.paths.heartbeat, {"time": time.time() - 120})
    by = {r.name: r for r in check_run(run).results}
    assert by["builtin:heartbeat_fresh"].status == "fail" and "120" in by["builtin:heartbeat_fresh"].detail
    atomic_write_json(run.paths.heartbeat, {"time": time.time()})
    by = {r.name: r for r in check_run(run).results}
    assert by["builtin:heartbeat_fresh"].status == "pass"


def _ckpt(run: Run, step: int, complete: bool = True, size: int | None = None) -> Path:
    d = run.paths.ckpt / f"step-{step:08d}"
    (d / "model").mkdir(parents=True)
    (d / "model" / "w.safetensors").write_bytes(b"x" * 100)
    (d / "trainer_state.pt").write_bytes(b"y" * 10)
    if complete:
        atomic_write_json(d / "manifest.json", {"complete": True, "format": 2, "step": step, "files": {
            "model/w.safetensors": size or 100, "trainer_state.pt": 10}})
        (d / "COMPLETE").write_text(f"{step}\n")
    return d


def test_checkpoint_checks(tmp_path: Path) -> None:
    run = make_run(tmp_path, [])
    _ckpt(run, 100)
    _ckpt(run, 200, size=999)  # truncated weights
    (run.paths.ckpt / ".tmp-step-00000300-1").mkdir()  # a save in progress is ignored
    assert validate(run.paths.ckpt / "step-00000100") is None
    assert "manifest says 999" in (validate(run.paths.ckpt / "step-00000200") or "")
    by = {r.name: r for r in check_run(run).results}
    c = by["builtin:checkpoint_loadable"]
    assert c.status == "fail" and c.severity == "warn"
    assert c.detail == ("step-00000200: model/w.safetensors has 100 bytes, the manifest says 999; "
                        "newest loadable is step-00000100")
    _ckpt(run, 400, complete=False)
    c = {r.name: r for r in check_run(run).results}["builtin:checkpoint_loadable"]
    assert c.detail.startswith("step-00000400: no manifest.json")
    for d in run.paths.ckpt.glob("step-*"):
        shutil.rmtree(d)
    _ckpt(run, 500)
    c = {r.name: r for r in check_run(run).results}["builtin:checkpoint_loadable"]
    assert c.status == "pass" and c.detail == "step-00000500: complete, its files match the manifest"


def test_memory_and_throughput_notes(tmp_path: Path) -> None:
    run = make_run(tmp_path, [], losses=[])
    for i in range(20):
        append_jsonl(run.paths.diagnostics, {"step": i, "loss": 3 - i * 0.1, "tokens_per_sec": 1000 if i < 10 else 600,
                                             "gpu_mem_peak_mb": 45000, "gpu_mem_total_mb": 80000})
    by = {r.name: r for r in check_run(run).results}
    assert by["builtin:gpu_memory"].detail == "peak 56% of GPU memory: batch size could be about 1.7x"
    assert "throughput fell to 60%" in by["builtin:throughput"].detail
    assert by["builtin:gpu_memory"].severity == "info"


# ----------------------------------------------------------------------------- the CLI
def test_orch_check_pass_and_fail(orch, tmp_path: Path) -> None:
    good = make_run(orch.results, ["val_ppl < 500", {"expr": "best.val_loss < 2.2", "severity": "error"}],
                    name="good", metrics={"final": {"val_loss": 2.1, "val_ppl": 8.2}})
    bad = make_run(orch.results, ["val_ppl < 500", {"expr": "best.val_loss < 1.95", "message": "did not converge"},
                                  {"expr": "effective_rank_ratio >= 0.8", "severity": "warn"}],
                   name="bad", metrics={"final": {"val_loss": 2.1, "val_ppl": 8.2}})
    res = orch("check", good.run_id)
    assert res.stdout.splitlines()[0].endswith("[COMPLETED]  7/7 pass")  # 5 built-ins + 2 spec checks
    saved = json.loads(good.paths.checks.read_text())
    assert saved["passed"] is True and saved["run_id"] == good.run_id
    res = orch("check", bad.run_id, check=1)
    assert "best.val_loss < 1.95" in res.stdout and "best.val_loss = 2.1" in res.stdout
    assert "did not converge" in res.stdout and res.stdout.splitlines()[0].endswith("6/8 pass FAILED")
    saved = json.loads(bad.paths.checks.read_text())
    assert saved["failing"] == ["best.val_loss < 1.95"]  # the warn-level unknown does not block
    warn = [r for r in saved["results"] if r["name"].startswith("effective_rank")][0]
    assert warn["status"] == "unknown"
    # both at once: exit 1; JSON output lists both
    out = json.loads(orch("check", good.run_id, bad.run_id, "--json", check=1).stdout)
    assert [v["passed"] for v in out] == [True, False]
    copy = json.loads(bad.paths.run_json.read_text())["checks"]
    assert copy["passed"] is False and copy["summary"] == out[1]["summary"] == "6/8 pass FAILED"


def test_orch_check_unknown_metric_is_not_a_pass(orch) -> None:
    run = make_run(orch.results, ["val_lss < 3"])
    res = orch("check", run.run_id, check=1)
    assert "UNKNOWN" in res.stdout and "did you mean val_loss" in res.stdout


def test_orch_check_bad_input_exits_2(orch) -> None:
    res = orch("check", "no-such-run", check=2)
    assert "no run matches" in res.stderr and "Traceback" not in res.stderr
    res = orch("check", check=2)
    assert "at least one run" in res.stderr


def test_checks_json_is_replaced_atomically(orch) -> None:
    run = make_run(orch.results, ["val_ppl < 500"])
    orch("check", run.run_id)
    first = run.paths.checks.stat().st_ino
    orch("check", run.run_id)
    assert run.paths.checks.stat().st_ino != first  # a new file renamed into place
    assert not [p for p in os.listdir(run.paths.root) if p.endswith(".tmp")]


def test_memory_note_from_per_device_lists(tmp_path: Path) -> None:
    run = make_run(tmp_path, [], losses=[])
    append_jsonl(run.paths.diagnostics, {"step": 1, "loss": 2.0, "mem_peak_gb": [40.0, 45.0], "mem_total_gb": [80.0, 80.0]})
    by = {r.name: r for r in check_run(run).results}
    assert by["builtin:gpu_memory"].detail.startswith("peak 56% of GPU memory")
    run2 = make_run(tmp_path, [], losses=[], name="nototal")
    append_jsonl(run2.paths.diagnostics, {"step": 1, "loss": 2.0, "mem_peak_gb": [40.0]})
    assert "builtin:gpu_memory" not in {r.name for r in check_run(run2).results}  # no total: no guess
