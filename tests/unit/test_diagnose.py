"""Failure diagnosis: realistic log tails and exit statuses -> failure classes and evidence."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from orchestrator.checks.diagnose import classify, diagnose_run, ensure_diagnosed, read_tail
from orchestrator.record.tree import ResultsRoot
from orchestrator.spec.schema import FAILURE_CLASSES


def tb(*frames: str, exc: str) -> list[str]:
    out = ["Traceback (most recent call last):"]
    for f in frames:
        out += [f'  File "{f}", line 42, in step', "    do_something()"]
    return out + [exc]


CASES = [
    # (name, kwargs, expected class, text that must be in summary/evidence)
    ("cuda_oom", dict(exit_code=1, stderr=tb("/x/trainers/lm.py", exc=
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)")),
     "oom", "CUDA out of memory"),
    ("host_memoryerror", dict(exit_code=1, stderr=tb("/x/t.py", exc="MemoryError")), "oom", "MemoryError"),
    ("host_oom_killer", dict(exit_code=None, signal=9, stderr=[
        "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=123.0. Some of your processes may have been "
        "killed by the cgroup out-of-memory handler."]), "oom", "oom-kill"),
    ("slurm_oom_state", dict(backend_state="OUT_OF_MEMORY", exit_code=None, signal=9), "oom", "OUT_OF_MEMORY"),
    ("torch_mmap", dict(exit_code=1, stderr=tb("/x/t.py", exc=
        "OSError: /venv/lib/libtorch_cpu.so: failed to map segment from shared object")), "oom", "failed to map"),
    ("nccl_error", dict(exit_code=1, stderr=tb("/x/dist.py", exc=
        "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, "
        "unhandled system error, NCCL version 2.19.3")), "nccl", "NCCL"),
    ("nccl_timeout", dict(exit_code=None, signal=6, stderr=[
        "[rank1]:[E ProcessGroupNCCL.cpp:563] [Rank 1] Watchdog caught collective operation timeout: "
        "WorkNCCL(SeqNum=1234, OpType=ALLREDUCE) ran for 600030 milliseconds before timing out."]), "nccl", "Watchdog"),
    ("unicode_data", dict(exit_code=1, stderr=tb("/x/trainers/data.py", "/usr/lib/python3.11/codecs.py", exc=
        "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 12: invalid start byte")),
     "data_error", "UnicodeDecodeError"),
    ("value_error_in_data_module", dict(exit_code=1, stderr=tb("/x/train.py", "/x/trainers/data.py", exc=
        "ValueError: train split has 10 tokens, fewer than block_size + 1 = 65")), "data_error", "ValueError"),
    ("tokenizer_error", dict(exit_code=1, stderr=tb("/x/main.py", exc=
        "RuntimeError: tokenization failed on shard 3: unexpected character")), "data_error", "tokenization"),
    ("custom_data_error", dict(exit_code=1, stderr=tb("/x/faulty.py", exc=
        "tests.fixtures.faulty.DataError: bad record 7 in /data/train.jsonl")), "data_error", "DataError"),
    ("nan_in_log", dict(exit_code=1, stdout=["step 120 loss nan lr 1e-3"], stderr=tb("/x/lm.py", exc=
        "FloatingPointError: loss is nan at step 120")), "diverged", "nan"),
    ("nan_in_diagnostics", dict(exit_code=1, diagnostics_tail=[{"step": 10, "loss": 2.0}, {"step": 20, "loss": None}]),
     "diverged", "step 20"),
    ("diverged_stop_reason", dict(exit_code=1, stop_reason="diverged: non-finite loss 3 times"), "diverged",
     "stop_reason"),
    ("user_error", dict(exit_code=1, stderr=tb("/home/u/model.py", exc=
        "KeyError: 'attention_mask'")), "user_error", "KeyError: 'attention_mask'"),
    ("assertion", dict(exit_code=1, stderr=tb("/home/u/model.py", exc="AssertionError")), "user_error",
     "AssertionError"),
    ("sigkill", dict(exit_code=None, signal=9), "killed", "SIGKILL"),
    ("shell_137", dict(exit_code=137), "killed", "SIGKILL"),
    ("sigsegv", dict(exit_code=None, signal=int(signal.SIGSEGV), stderr=["Fatal Python error: Segmentation fault"]),
     "killed", "SIGSEGV"),
    ("preempted_state", dict(backend_state="PREEMPTED", exit_code=75), "preempted", "preempted"),
    ("preempted_log", dict(exit_code=75, stderr=["slurmstepd: error: *** JOB 77 ON n1 CANCELLED AT 2024-01-01T00:00:00 "
                                                 "DUE TO PREEMPTION ***"]), "preempted", "PREEMPTION"),
    ("time_limit", dict(exit_code=None, signal=15, stderr=[
        "slurmstepd: error: *** JOB 77 ON n1 CANCELLED AT 2024-01-01T00:00:00 DUE TO TIME LIMIT ***"]),
     "timeout", "TIME LIMIT"),
    ("timeout_state", dict(backend_state="TIMEOUT", exit_code=0), "timeout", "TIMEOUT"),
    ("node_fail_state", dict(backend_state="NODE_FAIL"), "node_fail", "NODE_FAIL"),
    ("node_fail_log", dict(exit_code=None, signal=9, stderr=["srun: error: Node failure on n2",
                                                             "*** JOB 5 ON n2 CANCELLED DUE TO NODE FAILURE ***"]),
     "node_fail", "NODE FAILURE"),
    ("vanished", dict(backend_state="VANISHED"), "node_fail", "vanished"),
    ("cancelled_request", dict(cancel_requested=True, exit_code=None, signal=15), "cancelled", "cancelled"),
    ("cancelled_state", dict(backend_state="CANCELLED by 1000"), "cancelled", "cancelled"),
    ("stalled", dict(stalled=True, signal=9), "stalled", "heartbeat"),
    ("nothing", dict(exit_code=3), "unknown", "exit code 3"),
    ("enospc_path", dict(exit_code=1, stderr=tb("/x/trainers/framework/checkpoint.py", exc=
        "OSError: [Errno 28] No space left on device: '/r/ckpt/.tmp-step-00000040-7/model.safetensors'")),
     "disk_full", "writing /r/ckpt/.tmp-step-00000040-7/model.safetensors"),
    ("enospc_safetensors", dict(exit_code=1, stderr=tb("/x/t.py", exc=
        "safetensors_rust.SafetensorError: Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
        "message: \"No space left on device\" })")), "disk_full", "no space left on device"),
    ("quota", dict(exit_code=1, stderr=tb("/x/t.py", exc="OSError: [Errno 122] Disk quota exceeded: '/r/logs/x'")),
     "disk_full", "quota exceeded writing /r/logs/x"),
    ("torch_short_write", dict(exit_code=1, stderr=tb("/x/trainers/framework/checkpoint.py", exc=
        "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 193152 vs 193044")),
     "disk_full", "checkpoint.py:42"),
    ("eio", dict(exit_code=1, stderr=tb("/x/t.py", exc="OSError: [Errno 5] Input/output error: '/r/eval/m.jsonl'")),
     "io_error", "I/O error on /r/eval/m.jsonl"),
    ("vanished_disk_full", dict(backend_state="VANISHED", stderr=["orch: could not write /r/exit.json: "
                                                                  "No space left on device"]), "disk_full", "no space"),
]


@pytest.mark.parametrize("name,kwargs,cls,needle", CASES, ids=[c[0] for c in CASES])
def test_classify(name: str, kwargs: dict, cls: str, needle: str) -> None:
    d = classify(**kwargs)
    assert d.cls == cls, (d.cls, d.summary, d.evidence)
    assert d.cls in FAILURE_CLASSES
    blob = (d.summary + "\n" + "\n".join(d.evidence)).lower()
    assert needle.lower() in blob, (d.summary, d.evidence)


def test_user_error_names_the_exception_line_and_place() -> None:
    d = classify(exit_code=1, stderr=["some output", *tb("/home/u/proj/model.py", exc="ZeroDivisionError: division by zero")])
    assert d.exception == "ZeroDivisionError: division by zero"
    assert "model.py:42" in d.summary
    assert d.evidence[-1] == "ZeroDivisionError: division by zero"


def test_chained_traceback_uses_the_last_exception() -> None:
    lines = tb("/x/a.py", exc="KeyError: 'x'") + ["", "During handling of the above exception, another exception occurred:",
                                                 ""] + tb("/x/b.py", exc="RuntimeError: wrapped failure")
    d = classify(exit_code=1, stderr=lines)
    assert d.exception == "RuntimeError: wrapped failure"


def test_read_tail_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "stderr-1.log"
    with open(log, "wb") as fh:
        fh.write(b"x" * 5_000_000 + b"\n")
        for i in range(50):
            fh.write(f"line {i}\r".encode() * 3 + f"line {i} done\n".encode())
        fh.write(b"\x1b[31mRuntimeError: boom\x1b[0m\n")
    lines = read_tail(log, max_bytes=4096)
    assert lines[-1] == "RuntimeError: boom"
    assert lines[-2] == "line 49 done"
    assert all(len(ln) < 100 for ln in lines)  # the 5 MB line was never read whole
    assert read_tail(tmp_path / "missing.log") == []


def test_evidence_is_redacted() -> None:
    d = classify(exit_code=1, stderr=tb("/x/a.py", exc="ValueError: bad header Authorization: Bearer abcdefghijklmnop "
                                                       "HF_TOKEN=hf_abcdefghijklmnopqrstuvwx"))
    blob = d.summary + " ".join(d.evidence)
    assert "abcdefghijklmnop" not in blob and "hf_abcdefghijklmnopqrstuvwx" not in blob
    assert "<redacted>" in blob and "Authorization" in blob  # masked, not dropped


def test_evidence_is_bounded() -> None:
    d = classify(exit_code=1, stderr=["MemoryError"] * 1000 + tb("/x/a.py", exc="MemoryError: " + "y" * 5000))
    assert len(d.evidence) <= 6 and all(len(e) <= 300 for e in d.evidence)


def test_diagnose_run_reads_the_attempts_logs_and_records(tmp_path: Path) -> None:
    root = ResultsRoot(tmp_path / "results")
    run = root.create_run("demo", {"state": "FAILED", "exit_code": 1,
                                   "attempts": [{"n": 1, "exit_code": 0}, {"n": 2, "exit_code": 1, "state": "FAILED"}]})
    run.paths.stderr(1).write_text("\n".join(tb("/x/a.py", exc="KeyError: 'old'")) + "\n")
    run.paths.stderr(2).write_text("\n".join(tb("/x/trainers/data.py", exc="ValueError: data.path /d.txt does not exist")) + "\n")
    d = ensure_diagnosed(run)
    assert d is not None and d.cls == "data_error" and d.attempt == 2
    rec = json.loads(run.paths.run_json.read_text())
    assert rec["failure"]["class"] == "data_error"
    assert "ValueError: data.path /d.txt does not exist" in rec["failure"]["evidence"]
    assert rec["attempts"][1]["failure_class"] == "data_error"
    assert ensure_diagnosed(run) is None  # idempotent: already diagnosed for this attempt
    assert diagnose_run(run).cls == "data_error"
