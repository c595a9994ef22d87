"""Careless or hostile command lines end in exit 2 and a message, never a traceback or an action.

Issue 13 item 5 and issue 14's validation gaps, through the real CLI: an empty run id (an unset
"$RUN" in a script) must not cancel the only run; a results root that is a file or a typo must not
read as "no runs"; numeric options are range-checked.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Orch
from tests.integration.runfactory import make_run


@pytest.mark.parametrize("ref", ["", " ", "\t", "quickstart/"])
def test_blank_run_reference_matches_nothing(orch: Orch, ref: str) -> None:
    paths = make_run(orch.results, "quickstart", state="RUNNING")
    for command in ("cancel", "logs", "resume", "check"):
        res = orch(command, ref, check=2)
        assert "is not a run id, name or folder" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert json.loads(paths.run_json.read_text())["state"] == "RUNNING", "nothing was cancelled"


@pytest.mark.parametrize("root,problem", [
    ("/dev/null", "is not a directory"),
    ("/etc/passwd", "is not a directory"),
    ("/nonexistent/results", "does not exist"),
])
@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["check", "--all"], ["monitor", "--once"]])
def test_unusable_results_root(orch: Orch, root: str, problem: str, command: list[str]) -> None:
    res = orch("--results", root, *command, check=2)
    assert f"the results root {root} {problem}" in res.stderr
    assert "hint: pass --results DIR" in res.stderr and "Traceback" not in res.stderr


def test_submit_creates_a_missing_results_root(orch: Orch, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: demo\nmodel: {arch: gpt2, n_layer: 1, n_head: 1, d_model: 8, max_seq_len: 8}\n"
                    "data: {builtin: arith}\ntrain: {max_steps: 1, batch_size: 2}\n")
    res = orch("--results", str(tmp_path / "new" / "results"), "submit", str(spec), "--dry-run")
    assert "nothing was submitted" in res.stdout


@pytest.mark.parametrize("args,needle", [
    (["status", "--watch", "-1"], "argument --watch: expected 0.5 to 86400 seconds, got -1"),
    (["status", "--watch", "0"], "argument --watch: expected 0.5"),
    (["status", "--watch", "inf"], "expected a finite number"),
    (["status", "--watch", "nan"], "expected a finite number"),
    (["monitor", "--loop", "--interval", "0"], "argument --interval: expected 0.1 to"),
    (["logs", "x", "--lines", "-5"], "argument -n/--lines: expected 0 to"),
    (["logs", "x", "--lines", "1" * 40], "argument -n/--lines: expected 0 to"),
    (["logs", "x", "--attempt", "0"], "argument --attempt: expected 1 to"),
    (["logs", "x", "--attempt", "two"], "expected an integer, got 'two'"),
])
def test_numeric_options_are_range_checked(orch: Orch, args: list[str], needle: str) -> None:
    make_run(orch.results, "x", state="COMPLETED")
    res = orch(*args, check=2, timeout=30)
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
