"""A full disk, for real: the results tree on a small tmpfs that the test fills while a run trains.

Filled during a checkpoint, the run ends FAILED `disk_full` (not `user_error`). Filled during a log
append, the trainer dies, but the job wrapper still records the attempt's end (FAILED `disk_full`,
not a job that "vanished"); `orch check` and `orch monitor` report instead of crashing; after the
space is freed, `orch resume` completes the run, its first log record is not glued onto the torn
last line, and the COMPLETED run carries no note about the earlier attempt.

Mounting needs root: the tests skip with the reason otherwise.
"""
from __future__ import annotations

import json
import errno
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from orchestrator.record.atomicio import read_json
from tests.conftest import REPO, Orch, wait_until

FAULTY = "tests.fixtures.faulty:FaultyTrainer"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        for pid in _pids_using(mnt):  # a job the test left running must not keep the mount busy
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def _pids_using(mnt: Path) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and entry != str(os.getpid()):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if str(mnt).encode() in fh.read():
                        out.append(int(entry))
            except OSError:
                continue
    return out


def fill(mnt: Path, leave: int, name: str = "filler") -> Path:
    """Allocate all but `leave` bytes of the filesystem (really allocated: a tmpfs page per 4 KiB)."""
    filler = mnt / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for attempt in range(64):  # the running job writes meanwhile: ask again for a little less
            st = os.statvfs(mnt)
            want = st.f_bavail * st.f_frsize - leave - attempt * 16 * 1024
            if want <= 0:
                break
            try:
                os.posix_fallocate(fd, 0, want)
                break
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def rec(run_dir: Path) -> dict[str, Any]:
    data = read_json(run_dir / "run.json")
    assert isinstance(data, dict), f"{run_dir}/run.json is damaged"
    return data


def step(run_dir: Path) -> int:
    return int((read_json(run_dir / "heartbeat.json") or {}).get("step") or 0)


def no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr



def test_disk_full_during_a_checkpoint_is_disk_full(small_disk: Path, tmp_path: Path) -> None:
    orch = Orch(small_disk / "results", REPO)
    orch.results.mkdir()
    spec = tmp_path / "ck.yaml"
    spec.write_text("name: ck\n"
                    "model: {arch: gpt2, n_layer: 2, n_head: 2, d_model: 64, max_seq_len: 64}\n"
                    "data: {builtin: arith}\n"
                    "train: {max_steps: 200, batch_size: 16, lr: 3.0e-3, warmup_steps: 2, log_every: 10, device: cpu}\n"
                    "eval: {every: 1000, batches: 2}\n"
                    "checkpoint: {every: 40}\n"
                    "env: {OMP_NUM_THREADS: '1'}\n")
    run_dir = Path(orch.json("submit", str(spec))[0]["run_dir"])
    first = wait_until(lambda: next((run_dir / "ckpt").glob("step-*/manifest.json"), None), 240,
                       "a first checkpoint", run_dir).parent
    size = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
    filler = fill(small_disk, leave=size // 2)  # room for the logs until the next checkpoint, not for it
    wait_until(lambda: rec(run_dir)["state"] not in ("QUEUED", "RUNNING"), 240, "the run to end", run_dir)
    r = rec(run_dir)
    assert r["state"] == "FAILED" and r["failure"]["class"] == "disk_full", r.get("failure")
    assert r["attempts"][0]["failure_class"] == "disk_full"
    assert any("/ckpt/" in e for e in r["failure"]["evidence"]), r["failure"]  # the path, as evidence
    assert any("unexpected pos" in e or "No space left" in e or "PytorchStreamWriter" in e or "iostream" in e
               for e in r["failure"]["evidence"]), r["failure"]
    [row] = orch.json("status", run_dir.name)
    assert row["state"] == "FAILED" and row["failure"] == "disk_full", row
    res = orch("check", run_dir.name, check=1)
    no_traceback(res)
    assert "disk_full" in res.stdout
    filler.unlink()
    orch("resume", run_dir.name)
    wait_until(lambda: rec(run_dir)["state"] in ("COMPLETED", "FAILED"), 300, "the resumed run to end", run_dir)
    [row] = orch.json("status", run_dir.name)
    assert row["state"] == "COMPLETED" and row["failure"] is None and row["reason"] is None, row
    assert "resumed from step-" in (run_dir / "logs" / "stdout-2.log").read_text()


def test_disk_full_during_a_log_append_is_recorded_and_resumable(small_disk: Path, tmp_path: Path) -> None:
    orch = Orch(small_disk / "results", REPO)
    orch.results.mkdir()
    steps = 200
    spec = {"name": "full", "trainer": FAULTY, "seed": 3,
            "train": {"max_steps": steps, "log_every": 1, "lr": 0.05, "min_lr": 0.0, "device": "cpu"},
            "eval": {"every": 100000, "at_end": True},
            "checkpoint": {"every": 100000, "keep_last": 1, "hf_format": False},
            "env": {"OMP_NUM_THREADS": "1"}, "config": {"fail": "none", "step_sleep": 0.03}}
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    run_dir = Path(orch.json("submit", str(path))[0]["run_dir"])
    diag = run_dir / "logs" / "train_diagnostics.jsonl"
    wait_until(lambda: step(run_dir) >= 10, 180, "training to start", run_dir)
    filler = fill(small_disk, leave=0)
    wait_until(lambda: rec(run_dir)["state"] not in ("QUEUED", "RUNNING"), 120, "the attempt's end to be recorded",
               run_dir)
    r = rec(run_dir)
    att = r["attempts"][0]
    assert r["state"] == "FAILED" and att["ended_at"] and att["exit_code"] is not None, r
    assert r["failure"]["class"] == "disk_full" and att["failure_class"] == "disk_full", r["failure"]
    assert str(run_dir) in r["failure"]["summary"] + " ".join(r["failure"]["evidence"]), r["failure"]
    torn = not diag.read_bytes().endswith(b"\n")  # the append that hit the full disk, cut short
    [row] = orch.json("status", run_dir.name)
    assert row["state"] == "FAILED" and row["failure"] == "disk_full" and "vanished" not in str(row["reason"]), row
    still_full = fill(small_disk, leave=0, name="filler-2")  # what the wrapper freed for its record, too
    res = orch("check", run_dir.name, check=1)
    no_traceback(res)
    assert "disk_full" in res.stdout and "the verdict was not recorded (No space left on device" in res.stderr
    res = orch("monitor", "--once")
    no_traceback(res)
    assert "disk_full" in res.stdout and "No space left on device" in res.stderr, (res.stdout, res.stderr)
    still_full.unlink()
    filler.unlink()
    orch("resume", run_dir.name)
    wait_until(lambda: rec(run_dir)["state"] in ("COMPLETED", "FAILED"), 240, "the resumed run to end", run_dir)
    r = rec(run_dir)
    assert r["state"] == "COMPLETED" and r.get("failure") is None and r.get("state_reason") is None, r
    [row] = orch.json("status", run_dir.name)
    assert row["state"] == "COMPLETED" and row["failure"] is None and row["reason"] is None, row
    line = orch("status", run_dir.name).stdout.splitlines()[1]
    assert "vanished" not in line and "disk_full" not in line and "FAIL" not in line, line  # nothing stale
    lines = diag.read_bytes().split(b"\n")
    assert lines[-1] == b"" and not any(b"}{" in line for line in lines), "a record was glued onto a torn line"
    parsed, broken = [], []
    for line in lines[:-1]:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            broken.append(line)
    assert len(broken) == (1 if torn else 0), broken  # only the fragment the full disk cut, on its own line
    second = [p["step"] for p in parsed if p.get("attempt") == 2]
    assert second[0] <= 1 and second == list(range(second[0], steps + 1)), second[:5]  # none lost
