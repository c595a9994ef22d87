"""`orch generate` and `orch logs` as a user meets them: option ranges checked before anything loads,
no library noise while a checkpoint loads, line editing and history at the interactive prompt (in a
real pseudo-terminal), and a failed run's traceback shown by `orch logs` without knowing `--stderr`."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runfactory import REPO, make_run, orch


@pytest.fixture(scope="module")
def ckpt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with one checkpoint of a tiny char-level llama (the trainer's own manager)."""
    import torch
    from accelerate import Accelerator

    from trainers.framework.checkpoint import CheckpointManager
    from trainers.lm.config import ModelSpec
    from trainers.lm.models import build_model
    from trainers.lm.tokenization import CharTokenizer

    run_dir = tmp_path_factory.mktemp("gen")
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .\n")
    tok.save(run_dir / "tokenizer")
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="llama", n_layer=1, n_head=2, d_model=32, max_seq_len=16), tok.vocab_size)
    CheckpointManager(run_dir / "ckpt", Accelerator(), keep_last=1, tokenizer_dir=run_dir / "tokenizer").save(
        10, model, {"step": 10}, tokens_seen=640)
    return run_dir


@pytest.mark.parametrize("option, value, expected", [
    ("--top-p", "2", "--top-p: expected a number in (0, 1], got 2"),
    ("--top-p", "0", "--top-p: expected a number in (0, 1], got 0"),
    ("--temperature", "-0.5", "--temperature: expected a number >= 0 (0 = greedy), got -0.5"),
    ("--temperature", "nan", "--temperature: expected a number >= 0 (0 = greedy), got nan"),
    ("--max-new-tokens", "0", "--max-new-tokens: expected an integer from 1 to 100,000, got 0"),
    ("--max-new-tokens", "1000001", "--max-new-tokens: expected an integer from 1 to 100,000, got 1000001"),
    ("--top-k", "-1", "--top-k: expected an integer >= 0 (0 = off), got -1"),
])
def test_generate_rejects_out_of_range_options(tmp_path: Path, option: str, value: str, expected: str) -> None:
    res = orch("generate", str(tmp_path), "--prompt", "x", option, value, cwd=tmp_path)
    assert res.returncode == 2 and expected in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not res.stdout


def _read_until(fd: int, buf: bytearray, needle: bytes, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while buf.count(needle) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} x{count} in the terminal within {timeout} s:\n{buf.decode(errors='replace')}")
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"the terminal closed before {needle!r}:\n{buf.decode(errors='replace')}")
            buf += chunk


def test_interactive_prompt_has_line_editing_and_history(ckpt_run: Path, tmp_path: Path) -> None:
    """In a pseudo-terminal: loading prints one line (no progress bar, no library warnings), the up
    arrow recalls an earlier line (readline), and the lines are kept in
    $XDG_STATE_HOME/orch/generate_history for the next session."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm",
           "OMP_NUM_THREADS": "1"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "generate", str(ckpt_run), "-i", "--device", "cpu",
                             "--temperature", "0", "--max-new-tokens", "3"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=tmp_path, start_new_session=True)
    os.close(slave)
    buf = bytearray()
    try:
        _read_until(master, buf, b">>> ")
        os.write(master, b"params top_k=7\r")
        _read_until(master, buf, b"top_k=7")
        _read_until(master, buf, b">>> ", 2)
        os.write(master, b"params seed=5\r")
        _read_until(master, buf, b"seed=5")
        _read_until(master, buf, b">>> ", 3)
        os.write(master, b"\x1b[A\x1b[A\r")  # up, up: the line before last, `params top_k=7`, again
        _read_until(master, buf, b"settings:", 3)
        _read_until(master, buf, b">>> ", 4)
        os.write(master, b"quit\r")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = buf.decode(errors="replace")
    assert text.startswith(f"loaded checkpoint step 10 ({ckpt_run / 'ckpt' / 'step-00000010'})\r\n"), text
    assert "^[[A" not in text and "Loading weights" not in text and "Warning" not in text and "%|" not in text, text
    history = (tmp_path / "state" / "orch" / "generate_history").read_text()
    assert "params top_k=7" in history and "params seed=5" in history and "quit" in history


def test_logs_of_a_failed_run_show_the_traceback(tmp_path: Path) -> None:
    results = tmp_path / "results"
    failed = make_run(results, name="crashed", state="FAILED")
    failed.stdout(2).write_text("# orch attempt 2 on node01: python -m trainers ...\n")
    trace = "".join(f"  frame {i}\n" for i in range(40)) + "ValueError: the training split has 3 tokens\n"
    failed.stderr(2).write_text("Traceback (most recent call last):\n" + trace)
    res = orch("logs", "crashed", results=results, cwd=tmp_path, check=True)
    assert res.stdout.startswith("# orch attempt 2 on node01")
    assert "--- stderr (last 30 of 42 lines; all of it: orch logs crashed --stderr) ---" in res.stdout
    assert res.stdout.rstrip().endswith("ValueError: the training split has 3 tokens")
    assert "  frame 10\n" not in res.stdout and "  frame 11\n" in res.stdout

    fine = make_run(results, name="fine")
    fine.stdout(2).write_text("".join(f"step {i}\n" for i in range(5)))
    fine.stderr(2).write_text("a progress bar\n")
    res = orch("logs", "fine", results=results, cwd=tmp_path, check=True)
    assert res.stdout == "".join(f"step {i}\n" for i in range(5))  # a completed, talkative run: stdout only
