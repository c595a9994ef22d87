"""The researcher's terminal: `orch status` in a real terminal (tmux) at 80 and 120 columns, its
filters and sort, `status --watch`, and `submit --wait` piped on a real tiny run.

The tmux tests start a detached session of the given size, type the command with send-keys and
read the screen with capture-pane -J (wrapped lines joined, so a line that overflowed the width
shows as one long line). They skip with a reason when tmux is absent (`make system-deps`).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REPO, Orch
from tests.integration.runfactory import make_run

TMUX = shutil.which("tmux")
needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (`make system-deps` installs it)")
DONE, START = "__ORCH_DONE__", "__ORCH_START__"


def fabricate(results: Path) -> dict[str, str]:
    """A sweep of three runs (lr x d_model), a FAILED run whose failure class is data_error with a
    long summary, and a run with a long name: {label: run_id}."""
    ids = {}
    for i, (lr, d) in enumerate([(1e-3, 64), (3e-4, 64), (1e-3, 128)]):
        p = make_run(results, name="sweepy", lr=lr, d_model=d, seed=i, ckpt_bytes=256,
                     sweep_point={"train.lr": lr, "model.d_model": d})
        ids[f"sweep{i}"] = p.run_id
    p = make_run(results, name="quickstart", seed=7, state="FAILED", ckpt_bytes=256)
    rec = json.loads(p.run_json.read_text())
    rec["failure"] = {"class": "data_error", "diagnosed_at": "2025-03-14T10:20:01+00:00", "summary": "data.path /scratch/me/corpora/shakespeare/input.txt "
                      "does not exist on node gpu-017 (FileNotFoundError in the data loader)"}
    rec["created_ns"] = 10**18  # the newest run
    p.run_json.write_text(json.dumps(rec))
    ids["failed"] = p.run_id
    p = make_run(results, name="a-rather-long-experiment-name-for-width", seed=9, ckpt_bytes=256)
    ids["long"] = p.run_id
    return ids


@pytest.fixture
def tree(orch: Orch) -> dict[str, str]:
    return fabricate(orch.results)


class Term:
    """A detached tmux session of a given size running bash in the repository."""

    def __init__(self, width: int, height: int, env: dict[str, str]) -> None:
        self.name = f"orch-{uuid.uuid4().hex[:8]}"
        self.width = width
        self.runs = 0
        exports = {k: v for k, v in env.items() if k.startswith(("ORCH_", "PYTHON", "OMP_"))}
        exports.pop("COLUMNS", None)
        self.tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                  "bash --norc --noprofile")
        self.tmux("set-option", "-t", self.name, "history-limit", "5000")
        prefix = " ".join(f"export {k}={shlex.quote(v)};" for k, v in exports.items())
        self.type(f"{prefix} unset COLUMNS; cd {shlex.quote(str(REPO))}; clear")

    def tmux(self, *args: str) -> str:
        return subprocess.run([TMUX, *args], capture_output=True, text=True, check=True, timeout=20).stdout

    def type(self, line: str) -> None:
        self.tmux("send-keys", "-t", self.name, "-l", line)
        self.tmux("send-keys", "-t", self.name, "Enter")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def screen(self) -> list[str]:
        """The pane's lines (history included), wrapped lines joined, trailing blanks dropped."""
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", self.name)
        return [line.rstrip() for line in text.splitlines()]

    def run(self, command: str, timeout: float = 30) -> list[str]:
        """Type `command`, wait for it to finish; the lines it printed."""
        self.runs += 1
        start, done = f"{START}{self.runs}", f"{DONE}{self.runs}"
        self.type(f"clear; echo {start}; {command}; echo {done}")
        lines = self.until(lambda lines: done in lines, timeout)
        return lines[lines.index(start) + 1: lines.index(done)]

    def until(self, pred, timeout: float = 30) -> list[str]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        lines = self.screen()
        while time.monotonic() < deadline:
            lines = self.screen()
            while lines and not lines[-1]:
                lines.pop()
            if pred(lines):
                return lines
            time.sleep(0.2)
        raise AssertionError("timed out; the screen:\n" + "\n".join(lines))

    def close(self) -> None:
        subprocess.run([TMUX, "kill-session", "-t", self.name], capture_output=True, timeout=20)


@pytest.fixture
def term(orch: Orch) -> Iterator:  # type: ignore[type-arg]
    made: list[Term] = []

    def open_term(width: int, height: int = 40) -> Term:
        t = Term(width, height, {**orch.env, "PYTHONPATH": str(REPO)})
        made.append(t)
        return t

    yield open_term
    for t in made:
        t.close()


def orch_cmd(*args: str) -> str:
    return " ".join([shlex.quote(sys.executable), "-m", "orchestrator", *map(shlex.quote, args)])


def rows_of(lines: list[str]) -> dict[str, str]:
    """The table's rows by their first cell (the short run id)."""
    return {line.split()[0]: line for line in lines[1:] if line.strip()}


@needs_tmux
@pytest.mark.parametrize("width", [80, 120])
def test_status_fits_a_real_terminal(term, tree: dict[str, str], width: int) -> None:  # type: ignore[no-untyped-def]
    t = term(width)
    lines = t.run(orch_cmd("status"))
    assert len(lines) == 1 + len(tree), lines
    too_long = [line for line in lines if len(line) > width]
    assert not too_long, f"lines over {width} columns: {too_long}"
    header = lines[0].split()
    for col in ("RUN", "STATE", "%", "TRAIN", "VAL", "ETA", "NOTE"):
        assert col in header, (col, lines[0])
    if width >= 120:
        assert {"LR", "D_MODEL", "NAME", "CHECKS"} <= set(header), lines[0]  # the sweep's parameters
    [failed] = [line for line in lines if "FAILED" in line]
    assert "data_error" in failed, failed
    # RUN is a short id that status (and every command) resolves back to the run
    short = failed.split()[0]
    assert len(short) < len(tree["failed"]) and tree["failed"].endswith(short)
    again = t.run(orch_cmd("status", "--json", short))
    assert json.loads("".join(again))[0]["run_id"] == tree["failed"]


@needs_tmux
def test_status_watch_redraws_within_the_width_and_stops_on_ctrl_c(term, tree: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    t = term(80, 24)
    t.type("clear; " + orch_cmd("status", "--watch", "0.5") + f"; echo {DONE}")
    lines = t.until(lambda ls: any("every 0.5 s" in line for line in ls))
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert any("FAILED" in line and "data_error" in line for line in lines), lines
    assert any("COMPLETED 4" in line and "FAILED 1" in line for line in lines), lines
    t.keys("C-c")
    t.until(lambda ls: DONE in ls)


def test_status_piped_fits_columns_and_defaults_to_120(orch: Orch, tree: dict[str, str]) -> None:
    for width, env in ((120, {}), (80, {"COLUMNS": "80"}), (200, {"COLUMNS": "200"})):
        res = subprocess.run([sys.executable, "-m", "orchestrator", "status"], cwd=REPO, capture_output=True,
                             text=True, env={**{k: v for k, v in orch.env.items() if k != "COLUMNS"}, **env},
                             timeout=60)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert max(len(line) for line in lines) <= width, (width, res.stdout)
        assert "data_error" in res.stdout
    wide = orch("status", "--wide").stdout
    assert all(rid in wide for rid in tree.values())  # full ids, nothing cut
    assert "FileNotFoundError in the data loader" in wide


def test_status_where_sort_last(orch: Orch, tree: dict[str, str]) -> None:
    def ids(*args: str) -> list[str]:
        return [s["run_id"] for s in orch.json("status", *args)]

    assert ids("--where", "model.d_model=128") == [tree["sweep2"]]
    assert set(ids("--where", "train.lr=1e-3")) == {tree["sweep0"], tree["sweep2"], tree["failed"], tree["long"]}
    assert set(ids("--where", "train.lr=0.001", "--where", "model.d_model!=64")) == {tree["sweep2"]}
    assert ids("--name", "sweepy", "--sort", "val") == [tree["sweep2"], tree["sweep1"], tree["sweep0"]]
    assert ids("--name", "sweepy", "--sort", "val", "--reverse") == [tree["sweep0"], tree["sweep1"], tree["sweep2"]]
    assert ids("--last", "1") == [tree["failed"]]
    assert len(ids("--last", "2")) == 2 and ids("--last", "2")[-1] == tree["failed"]
    assert ids("--state", "COMPLETED", "--last", "1") != [tree["failed"]] and len(ids("--state", "COMPLETED", "--last", "2")) == 2


@pytest.mark.parametrize("args, phrase", [
    (["--watch", "0"], "expected 0.5 to 86400 seconds"),
    (["--watch", "-3"], "expected 0.5 to 86400 seconds"),
    (["--watch", "nan"], "expected a finite number"),
    (["--watch", "1e9"], "expected 0.5 to 86400 seconds"),
    (["--watch", "soon"], "expected a number, got 'soon'"),
    (["--where", "model.d_model"], "expected KEY=VALUE"),
    (["--where", "=3"], "expected KEY=VALUE"),
    (["--where", "model.d_modl=128"], "did you mean model.d_model"),
    (["--sort", "vall"], "did you mean val"),
    (["--last", "0"], "expected 1 to 1,000,000,000, got 0"),
])
def test_status_bad_flags_exit_2(orch: Orch, tree: dict[str, str], args: list[str], phrase: str) -> None:
    res = orch("status", *args, check=2, timeout=60)
    assert phrase in res.stderr and "Traceback" not in res.stderr, res.stderr


TINY = """\
name: tinywait
model: {arch: gpt2, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 32}
data: {builtin: arith}
train: {max_steps: 60, batch_size: 8, lr: 3.0e-3, warmup_steps: 2, log_every: 5}
eval: {every: 20, batches: 2}
checkpoint: {every: 30}
"""


def test_submit_wait_piped_prints_progress_without_repeats(orch: Orch, tmp_path: Path) -> None:
    spec = tmp_path / "tinywait.yaml"
    spec.write_text(TINY)
    res = orch("submit", str(spec), "--wait", timeout=300)  # stdout and stderr are pipes
    progress = [line for line in res.stderr.splitlines() if line.strip()]
    run_id = res.stdout.splitlines()[0].split()[1]
    assert res.stdout.splitlines()[-1] == f"{run_id}: COMPLETED"
    bodies = [line.split("  ", 1)[1] for line in progress]  # without the time stamp
    assert len(bodies) == len(set(bodies)), "a progress line repeated:\n" + res.stderr
    assert len(progress) <= 16, res.stderr  # one per state change or tenth of progress, not one per poll
    assert any("RUNNING" in b and "/60 (" in b and "loss " in b and "tok/s" in b for b in bodies), res.stderr
    assert "COMPLETED  60/60 (100%)" in bodies[-1], res.stderr
    assert all(len(line) <= 120 for line in progress)
    assert os.path.isdir(orch.results / "tinywait" / run_id)


def test_status_watch_piped_prints_each_run_once_until_it_changes(orch: Orch, tree: dict[str, str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "status", "--watch", "0.5"], cwd=REPO,
                            env=orch.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)  # several refreshes of an unchanging tree
    finally:
        proc.send_signal(2)
        out, err = proc.communicate(timeout=30)
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == len(tree), out + err  # one line per run, not one table per refresh
    assert any("FAILED" in line and "data_error" in line for line in lines) and "Traceback" not in err
