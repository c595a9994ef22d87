"""Damaged and unreadable run folders never break a command, and are never left out silently.

A shared results tree holds the damage real trees collect: truncated or empty run.json files,
JSON that is not a record, an empty folder, a garbage heartbeat, a missing spec.yaml, an unknown
trainer, and (seen by another user) folders and files it may not read. Every command must serve
the healthy runs, name each damaged folder (path + what is wrong: a DAMAGED row in `orch status`,
a warning on stderr elsewhere), exit non-zero only when the run it was asked about is damaged,
and never print a traceback. The unreadable-folder test runs the CLI as `nobody`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from orchestrator.record.atomicio import read_jsonl
from tests.conftest import REPO, Orch
from tests.integration.damagedtree import GROUP, make_damaged, make_odd
from tests.integration.runfactory import make_run


def healthy_lm(results: Path, name: str, run_id: str, seed: int) -> Path:
    """A finished lm run (runfactory) whose spec.yaml is valid as written (no secret in env:)."""
    p = make_run(results, name, run_id, seed=seed)
    spec = yaml.safe_load(p.spec.read_text())
    spec["env"].pop("WANDB_API_KEY")
    p.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p.root


def no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr


def names_every(text: str, results: Path, expected: dict[str, str]) -> None:
    """Each damaged folder's path and the phrase of its problem appear on one line of `text`."""
    for run_id, phrase in expected.items():
        path = str(results / GROUP / run_id)
        lines = [line for line in text.splitlines() if f"{path}:" in line]
        assert lines and phrase in lines[0], f"{run_id}: expected {phrase!r} in {lines or text[-3000:]}"


@pytest.fixture
def tree(orch: Orch) -> tuple[Orch, dict[str, str], dict[str, str]]:
    results = orch.results
    healthy_lm(results, "quick", "quick-a", 1)
    healthy_lm(results, "quick", "quick-b", 2)
    torn = results / "quick" / "quick-torn"  # a damaged run among a name's healthy runs
    shutil.copytree(results / "quick" / "quick-b", torn, symlinks=True)
    (torn / "run.json").write_text('{"run_id": "quick-torn", "state": "COMPL')
    damaged = make_damaged(results)
    odd = make_odd(results)
    return orch, damaged, odd


def test_damaged_folders_are_named_by_every_command(tree: tuple[Orch, dict[str, str], dict[str, str]]) -> None:
    orch, damaged, odd = tree
    results = orch.results

    # status: the healthy and odd runs with their state, one DAMAGED row per damaged folder
    res = orch("status", "--wide")
    no_traceback(res)
    rows = {line.split()[0]: line for line in res.stdout.splitlines()[1:]}
    for run_id in ["quick-a", "quick-b", *odd]:
        assert rows[run_id].split()[2] == "COMPLETED", rows[run_id]
    for run_id in [*damaged, "quick-torn"]:
        assert rows[run_id].split()[2] == "DAMAGED", rows.get(run_id)
    names_every(res.stdout, results, damaged)
    summaries = orch.json("status")
    by_id = {s["run_id"]: s for s in summaries}
    for run_id, phrase in damaged.items():
        s = by_id[run_id]
        assert s["state"] == "DAMAGED" and phrase in s["damaged"] and s["run_dir"] == str(results / GROUP / run_id), s
    assert by_id["quick-a"]["damaged"] is None and by_id["odd-garbage-heartbeat"]["state"] == "COMPLETED"
    assert {s["run_id"] for s in orch.json("status", "--state", "DAMAGED")} == {*damaged, "quick-torn"}
    # asked about a damaged run: its row, and exit 1; asked about healthy ones: exit 0
    res = orch("status", "--wide", "empty-list", check=1)
    assert "DAMAGED" in res.stdout and "expected a JSON object, found list" in res.stdout
    orch("status", "quick-a", "odd-no-spec")
    res = orch("status", "--wide", "quick", check=1)  # a name whose runs include a damaged one
    assert "quick-a" in res.stdout and "quick-torn" in res.stdout and "DAMAGED" in res.stdout

    # check --all: every damaged folder named on stderr; verdicts for the rest, exit as theirs
    healthy_rc = orch("check", "quick-a", "quick-b", *odd, check=False).returncode
    res = orch("check", "--all", check=healthy_rc)
    no_traceback(res)
    names_every(res.stderr, results, damaged)
    for run_id in ["quick-a", "quick-b", *odd]:
        assert f"{run_id}  [COMPLETED]" in res.stdout, res.stdout
    assert "the run folder has no spec.yaml" in res.stdout and "unknown trainer 'nosuchtrainer'" in res.stdout
    assert "pass" in res.stdout.split("quick-a  [COMPLETED]")[1].splitlines()[0]
    res = orch("check", "truncated", check=1)
    no_traceback(res)
    assert f"{results / GROUP / 'truncated'}: run.json: not valid JSON" in res.stderr

    # compare: damaged refs are named, never "no run matches"; the rest is still compared
    res = orch("compare", "quick-a", "quick-b")
    assert res.stderr == "" and "quick-a" in res.stdout
    res = orch("compare", "quick", check=1)
    no_traceback(res)
    assert "quick-torn" in res.stderr and "not valid JSON" in res.stderr and "quick-b" in res.stdout
    for ref in ("empty-list", f"{GROUP}/truncated", str(results / GROUP / "empty-folder")):
        res = orch("compare", ref, check=1)
        no_traceback(res)
        assert "is damaged" in res.stderr and "no run matches" not in res.stderr, res.stderr
    res = orch("compare", "quick-a", "json-null", check=1)
    assert "found NoneType" in res.stderr and "quick-a" in res.stdout

    # commands about one run: exit 1 with what is wrong, no traceback
    for args in (["cancel", "state-number"], ["resume", "unknown-state"], ["logs", "attempts-string"],
                 ["preserve", "binary", "--dest", str(results.parent / "kept")], ["plot", "empty-file"]):
        res = orch(*args, check=1)
        no_traceback(res)
        assert "damaged" in res.stderr and str(results / GROUP) in res.stderr, (args, res.stderr)

    # monitor: exit 0, acts on the healthy runs, names every damaged folder, a second pass repeats nothing
    res = orch("monitor", "--once")
    no_traceback(res)
    names_every(res.stderr, results, damaged)
    events = read_jsonl(results / "events.jsonl")
    acted = {e["run_id"] for e in events if e["event"] in ("completed", "checks_failed")}
    assert acted == {"quick-a", "quick-b", *odd}, events
    assert not [e for e in events if e["event"] == "monitor_error"], events
    res = orch("monitor", "--once")
    assert res.stdout == "" and read_jsonl(results / "events.jsonl") == events
    names_every(res.stderr, results, damaged)
    assert "quick-torn: run.json: not valid JSON" in res.stderr


# ----------------------------------------------------------------------------- another user's folders
def _other_user_python(base: Path) -> tuple[list[str], dict[str, str]]:
    """The argv prefix and environment that run `python -m orchestrator` as `nobody` (skips when
    this machine cannot: no setpriv/runuser, or no interpreter `nobody` may execute)."""
    if shutil.which("setpriv"):
        drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    elif shutil.which("runuser"):
        drop = ["runuser", "-u", "nobody", "--"]
    else:
        pytest.skip("neither setpriv nor runuser is installed: cannot run the CLI as another user")
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "HOME": str(base), "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": str(base / "mpl"),
           "PYTHONPATH": os.pathsep.join([str(REPO), site])}
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, shutil.which(f"python{ver}") or "", f"/usr/bin/python{ver}"):
        if not python:
            continue
        probe = subprocess.run(drop + [python, "-c", "import orchestrator.cli, yaml, pydantic, pandas"],
                               env=env, capture_output=True, text=True, cwd=base)
        if probe.returncode == 0:
            return drop + [python], env
    pytest.skip(f"no Python {ver} interpreter that `nobody` may run with this project's packages")


@pytest.fixture
def shared_tree() -> Iterator[Path]:
    """A results tree `nobody` can reach (pytest's own tmp folder is private to root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make folders of another user")
    base = Path(tempfile.mkdtemp(prefix="orch-shared-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
        shutil.rmtree(base)


def test_unreadable_folders_of_another_user_break_no_command(shared_tree: Path) -> None:
    base = shared_tree
    results = base / "results"
    mine = [healthy_lm(results, "quick", "quick-a", 1), healthy_lm(results, "quick", "quick-b", 2)]
    theirs = healthy_lm(results, "theirs", "theirs-x", 3)  # another user's run folder: mode 000
    locked = healthy_lm(results, "quick", "quick-locked", 4)  # a readable folder, an unreadable run.json
    healthy_lm(results, "private", "private-y", 5)  # a whole name folder at mode 000
    results.chmod(0o777)
    for run_dir in mine:
        subprocess.run(["chown", "-R", "nobody:nogroup", str(run_dir)], check=True)
    theirs.chmod(0o000)
    (locked / "run.json").chmod(0o000)
    (results / "private").chmod(0o000)
    prefix, env = _other_user_python(base)
    env["ORCH_RESULTS"] = str(results)

    def as_nobody(*args: str, rc: int | None = 0) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(prefix + ["-m", "orchestrator", *args], env=env, capture_output=True, text=True,
                             cwd=base, timeout=300)
        assert "Traceback" not in res.stderr and "PermissionError" not in res.stderr, res.stderr
        if rc is not None:
            assert res.returncode == rc, (args, res.returncode, res.stdout, res.stderr)
        return res

    expected = {str(theirs): "cannot read the run folder: Permission denied (folder mode 000, owner uid 0)",
                str(locked): "cannot read run.json: Permission denied (file mode 000, owner uid 0)",
                str(results / "private"): "cannot list the folder: Permission denied (folder mode 000, owner uid 0)"}

    def named(text: str) -> None:
        for path, phrase in expected.items():
            assert any(f"{path}: {phrase}" in line for line in text.splitlines()), (path, text)

    res = as_nobody("status", "--wide")
    named(res.stdout)
    assert "quick-a" in res.stdout and "quick-b" in res.stdout
    rows = {r["run_dir"]: r for r in json.loads(as_nobody("status", "--json").stdout)}
    for path, phrase in expected.items():
        assert rows[path]["state"] == "DAMAGED" and phrase in rows[path]["damaged"], rows[path]
    assert rows[str(mine[0])]["state"] == "COMPLETED"
    as_nobody("status", "theirs-x", rc=1)
    mine_rc = as_nobody("check", "quick-a", "quick-b", rc=None).returncode
    res = as_nobody("check", "--all", rc=mine_rc)
    named(res.stderr)
    assert "quick-a  [COMPLETED]" in res.stdout and "quick-b  [COMPLETED]" in res.stdout
    res = as_nobody("compare", "quick-a", "quick-b")
    assert "quick-a" in res.stdout and res.stderr == ""
    res = as_nobody("compare", "theirs-x", rc=1)
    assert expected[str(theirs)] in res.stderr and "no run matches" not in res.stderr
    res = as_nobody("monitor", "--once")
    named(res.stderr)
    events = read_jsonl(results / "events.jsonl")
    assert {e["run_id"] for e in events if e["event"] in ("completed", "checks_failed")} == {"quick-a", "quick-b"}
    res = as_nobody("monitor", "--once")
    assert res.stdout == "" and read_jsonl(results / "events.jsonl") == events
