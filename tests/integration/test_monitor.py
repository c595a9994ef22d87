"""`orch monitor` against REAL failing jobs on the local backend: real processes, real signals.

Jobs are submitted with the real CLI; they fail by themselves (a corrupt data file, NaN loss, an
allocation under an address-space limit) or are hit from outside (SIGKILL of the whole job, SIGSTOP
of the trainer). `tests.fixtures.faulty:FaultyTrainer` fails on purpose; the SIGKILL-and-resume
test trains a tiny lm model, because there resuming real training state is the point.
"""
from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.record.atomicio import read_json, read_jsonl
from tests.conftest import wait_until

FAULTY = "tests.fixtures.faulty:FaultyTrainer"


def spec_file(tmp: Path, name: str, **over: Any) -> Path:
    spec: dict[str, Any] = {
        "name": name, "trainer": FAULTY, "seed": 3,
        "train": {"max_steps": 30, "log_every": 2, "lr": 0.05, "min_lr": 0.0, "device": "cpu"},
        "eval": {"every": 10, "at_end": True},
        "checkpoint": {"every": 10, "keep_last": 2, "hf_format": False},
        "resources": {"time": "00:05:00"},
        "env": {"OMP_NUM_THREADS": "1"},
        "config": {"fail": "none", "step_sleep": 0.02},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    if spec["trainer"] != FAULTY:
        del spec["config"]  # the faulty trainer's own section (FaultySpec)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def submit(orch, path: Path) -> Path:
    rows = orch.json("submit", str(path))
    return Path(rows[0]["run_dir"])


def rec(run_dir: Path) -> dict[str, Any]:
    data = read_json(run_dir / "run.json")
    assert isinstance(data, dict), f"{run_dir}/run.json is damaged"
    return data


def wait_state(run_dir: Path, *states: str, timeout: float = 180) -> dict[str, Any]:
    return wait_until(lambda: rec(run_dir) if rec(run_dir).get("state") in states else None, timeout,
                      f"{run_dir.name} to reach {states}", run_dir)


def job_pid(run_dir: Path) -> int:
    return int(rec(run_dir)["attempts"][-1]["job_id"].split("@")[0])


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def events(orch) -> list[dict[str, Any]]:
    return read_jsonl(orch.results / "events.jsonl")


def kinds(orch, run_dir: Path) -> list[str]:
    return [e["event"] for e in events(orch) if e.get("run_id") == run_dir.name]


# ----------------------------------------------------------------------------- data error
def test_data_error_is_classified_not_retried_and_alerted(orch, tmp_path: Path) -> None:
    corpus = tmp_path / "train.txt"
    corpus.write_bytes(b"hello world\n" * 10 + b"\xff\xfe broken \x80 bytes\n")
    hook_out = tmp_path / "hook.jsonl"
    run_dir = submit(orch, spec_file(tmp_path, "dataerr", config={"fail": "data_error", "data_file": str(corpus)},
                                     monitor={"on_event": f"tee -a {hook_out}"}))
    wait_state(run_dir, "FAILED")
    res = orch("monitor", "--once")
    out = res.stdout
    assert "data_error" in out and "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff" in out, out
    assert "not in retry.on" in out
    r = rec(run_dir)
    assert r["failure"]["class"] == "data_error"
    assert any("UnicodeDecodeError" in e for e in r["failure"]["evidence"])
    assert "faulty.py" in r["failure"]["summary"]  # where it was raised
    assert len(r["attempts"]) == 1 and r["state"] == "FAILED"  # not retried
    assert kinds(orch, run_dir) == ["failed", "not_retried"]
    hooked = [json.loads(line) for line in hook_out.read_text().splitlines()]
    assert [h["event"] for h in hooked] == ["failed", "not_retried"]
    assert "UnicodeDecodeError" in hooked[0]["exception"]
    # idempotent: a second pass changes nothing and prints nothing
    res = orch("monitor", "--once")
    assert res.stdout == "" and kinds(orch, run_dir) == ["failed", "not_retried"]


# ----------------------------------------------------------------------------- SIGKILL + resume
LM = {
    "trainer": "lm",
    "model": {"arch": "gpt2", "n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 32, "dropout": 0.0},
    "tokenizer": {"type": "char"}, "data": {"builtin": "arith"},
    "train": {"max_steps": 120, "batch_size": 8, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5, "log_every": 5,
              "device": "cpu"},
    "eval": {"every": 40, "batches": 2, "batch_size": 8},
    "checkpoint": {"every": 20, "keep_last": 2},
    "retry": {"max_attempts": 3, "backoff": 0},
    "checks": ["best.val_loss < 10", "val_loss < 10"],
}


def test_sigkill_mid_training_is_resubmitted_and_resumes(orch, tmp_path: Path) -> None:
    run_dir = submit(orch, spec_file(tmp_path, "killed", **LM))
    wait_until(lambda: list((run_dir / "ckpt").glob("step-*/manifest.json")), 240, "a first checkpoint", run_dir)
    pid = job_pid(run_dir)
    os.killpg(pid, signal.SIGKILL)  # the whole job, wrapper included: a node failure stand-in
    wait_until(lambda: pid_gone(pid), 30, "the job to die")
    assert rec(run_dir)["state"] == "RUNNING"  # nobody recorded anything
    res = orch("monitor", "--once")
    assert "node_fail" in res.stdout and "RETRIED" in res.stdout, res.stdout
    r = rec(run_dir)
    assert len(r["attempts"]) == 2 and r["attempts"][0]["failure_class"] == "node_fail"
    final = wait_state(run_dir, "COMPLETED", "FAILED", timeout=300)
    assert final["state"] == "COMPLETED", final
    stdout2 = (run_dir / "logs" / "stdout-2.log").read_text()
    assert "resumed from step-" in stdout2, stdout2[-2000:]
    second = [x for x in read_jsonl(run_dir / "logs" / "train_diagnostics.jsonl") if x.get("attempt") == 2]
    assert second and second[0]["step"] > 20  # it continued, it did not start over
    res = orch("monitor", "--once")
    assert "DONE" in res.stdout and kinds(orch, run_dir).count("retried") == 1
    assert read_json(run_dir / "checks.json")["passed"] is True
    orch("check", run_dir.name)


# ----------------------------------------------------------------------------- SIGSTOP -> STALLED
def test_sigstop_becomes_stalled_and_is_handled_per_policy(orch, tmp_path: Path) -> None:
    # a budget no run finishes during the test (both are cancelled at the end), however fast the machine
    base = {"train": {"max_steps": 100000, "log_every": 2, "lr": 0.05, "min_lr": 0.0, "device": "cpu"},
            "config": {"fail": "none", "step_sleep": 0.05}, "monitor": {"stall_after": 8}}
    kill = submit(orch, spec_file(tmp_path, "stall-kill", retry={"on": ["stalled"], "max_attempts": 2, "backoff": 0},
                                  **base))
    wait = submit(orch, spec_file(tmp_path, "stall-wait", **base))
    pids = {}
    for run_dir in (kill, wait):
        hb = wait_until(lambda: (read_json(run_dir / "heartbeat.json") or {}).get("phase") == "train"
                        and read_json(run_dir / "heartbeat.json"), 120, "training to start", run_dir)
        pids[run_dir] = hb["pid"]
        os.kill(hb["pid"], signal.SIGSTOP)  # the trainer freezes; its wrapper lives on
    time.sleep(10)
    res = orch("monitor", "--once", timeout=120)
    out = res.stdout
    assert out.count("STALLED") >= 2, out
    # policy "stalled" in retry.on: stopped, classified, resubmitted
    assert kinds(orch, kill)[:4] == ["stalled", "killed_stalled", "failed", "retried"], kinds(orch, kill)
    r = rec(kill)
    assert r["attempts"][0]["failure_class"] == "stalled" and len(r["attempts"]) == 2
    assert pid_gone(pids[kill])
    # default policy: marked STALLED and left alone; it recovers when continued
    assert rec(wait)["state"] == "STALLED" and kinds(orch, wait) == ["stalled"]
    os.kill(pids[wait], signal.SIGCONT)
    wait_until(lambda: (read_json(wait / "heartbeat.json") or {}).get("time", 0) > time.time() - 3, 60, "a fresh beat")
    orch("monitor", "--once")
    assert kinds(orch, wait) == ["stalled", "recovered"] and rec(wait)["state"] == "RUNNING"
    orch("cancel", kill.name, wait.name, check=False)
    for run_dir in (kill, wait):
        wait_state(run_dir, "CANCELLED", "COMPLETED", "FAILED", timeout=60)


# ----------------------------------------------------------------------------- NaN and OOM
def test_nan_loss_is_diverged(orch, tmp_path: Path) -> None:
    run_dir = submit(orch, spec_file(tmp_path, "nan", config={"fail": "nan", "at_step": 6, "step_sleep": 0}))
    wait_state(run_dir, "FAILED")
    res = orch("monitor", "--once")
    r = rec(run_dir)
    assert r["failure"]["class"] == "diverged", r["failure"]
    assert any("loss = NaN" in e for e in r["failure"]["evidence"])
    assert "diverged" in res.stdout and len(r["attempts"]) == 1


def test_oom_under_a_memory_limit_is_oom_and_retried_with_half_the_batch(orch, tmp_path: Path) -> None:
    run_dir = submit(orch, spec_file(tmp_path, "oom", config={"fail": "oom", "at_step": 4, "step_sleep": 0},
                                     train={"max_steps": 20, "batch_size": 8, "grad_accum": 1, "log_every": 2,
                                            "lr": 0.05, "min_lr": 0.0, "device": "cpu"},
                                     retry={"on": ["oom"], "max_attempts": 2, "backoff": 0, "oom_halve_batch": True}))
    wait_state(run_dir, "FAILED")
    res = orch("monitor", "--once")
    r = rec(run_dir)
    assert r["attempts"][0]["failure_class"] == "oom", r.get("failure")
    failed = [e for e in events(orch) if e.get("run_id") == run_dir.name and e["event"] == "failed"][0]
    assert failed["class"] == "oom" and any("Cannot allocate memory" in e for e in failed["evidence"]), failed
    assert "OOM-HALVED" in res.stdout and "RETRIED" in res.stdout, res.stdout
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert spec["train"]["batch_size"] == 4 and spec["train"]["grad_accum"] == 2
    assert r["adjustments"][0]["batch_size"] == [8, 4]
    assert wait_state(run_dir, "COMPLETED", "FAILED")["state"] == "COMPLETED"


# ----------------------------------------------------------------------------- concurrency
def test_five_concurrent_monitors_resubmit_each_failed_run_once(orch, tmp_path: Path) -> None:
    runs = [submit(orch, spec_file(tmp_path, f"crash{i}", config={"fail": "user_error", "at_step": 2, "step_sleep": 0},
                                   retry={"on": ["user_error"], "max_attempts": 3, "backoff": 0}))
            for i in range(3)]
    for run_dir in runs:
        wait_state(run_dir, "FAILED")
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "monitor", "--once"], cwd=orch.cwd, env=orch.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, outs
    assert sum("RETRIED" in o for o, _ in outs) == 1  # one pass acted, four exited quietly
    # and passes that come later (not overlapping) are idempotent too
    for _ in range(2):
        orch("monitor", "--once")
    for run_dir in runs:
        r = rec(run_dir)
        assert len(r["attempts"]) == 2, r["attempts"]
        assert kinds(orch, run_dir).count("retried") == 1
        assert r["attempts"][0]["failure_class"] == "user_error"
        failed = [e for e in events(orch) if e.get("run_id") == run_dir.name and e["event"] == "failed"]
        assert len(failed) == 1 and failed[0]["exception"] == "KeyError: 'attention_mask'"
    for line in (orch.results / "events.jsonl").read_bytes().splitlines():
        json.loads(line)  # no torn or interleaved lines
    for run_dir in runs:
        assert wait_state(run_dir, "COMPLETED", "FAILED")["state"] == "COMPLETED"
    orch("monitor", "--once")
    for run_dir in runs:
        assert kinds(orch, run_dir).count("completed") + kinds(orch, run_dir).count("checks_failed") == 1


# ----------------------------------------------------------------------------- alerts and cron
class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_and_broken_hooks_never_break_the_pass(orch, tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook?token=s3cr3t"
        run_dir = submit(orch, spec_file(tmp_path, "hooked", config={"fail": "user_error", "at_step": 1, "step_sleep": 0},
                                         monitor={"webhook": url, "on_event": "no-such-command-xyz --flag"}))
        wait_state(run_dir, "FAILED")
        res = orch("monitor", "--once")
    finally:
        server.shutdown()
    assert [h["event"]["event"] for h in _Hook.received] == ["failed", "not_retried"]
    assert "KeyError" in _Hook.received[0]["text"]
    assert "ALERT!" in res.stdout or any(e["event"] == "alert_failed" for e in events(orch))
    alert_failures = [e for e in events(orch) if e["event"] == "alert_failed"]
    assert alert_failures and "command not found: no-such-command-xyz" in alert_failures[0]["summary"]
    assert "s3cr3t" not in (orch.results / "events.jsonl").read_text() + res.stdout + res.stderr


def test_install_cron_prints_the_line_and_rejects_bad_input(orch) -> None:
    res = orch("monitor", "--install-cron", "--every", "10m")
    line = res.stdout.strip()
    assert line.startswith("*/10 * * * * cd ") and "monitor --once" in line and str(orch.results) in line
    assert orch("monitor", "--install-cron", "--every", "2h").stdout.startswith("0 */2 * * *")
    for bad in ("7m", "0m", "soon", "5h"):
        res = orch("monitor", "--install-cron", "--every", bad, check=2)
        assert "error:" in res.stderr and "Traceback" not in res.stderr


def test_monitor_rejects_a_missing_results_root(orch, tmp_path: Path) -> None:
    res = orch("--results", str(tmp_path / "nope"), "monitor", "--once", check=2)
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_monitor_loop_runs_passes(orch, tmp_path: Path) -> None:
    res = orch("monitor", "--loop", "--interval", "0.2", "--passes", "3")
    assert res.returncode == 0


def test_finished_run_is_checked_and_preserved_once(orch, tmp_path: Path) -> None:
    dest = tmp_path / "preserved"
    run_dir = submit(orch, spec_file(tmp_path, "keeper", config={"fail": "none", "step_sleep": 0},
                                     checks=["val_loss < 100", {"expr": "best.val_loss < 0", "severity": "warn"}],
                                     preserve={"auto": True, "dest": str(dest), "checkpoints": "last"}))
    wait_state(run_dir, "COMPLETED")
    res = orch("monitor", "--once")
    assert "DONE" in res.stdout and "PRESERVED" in res.stdout, res.stdout + res.stderr
    assert read_json(run_dir / "checks.json")["passed"] is True
    assert any(dest.iterdir())
    orch("monitor", "--once")
    assert kinds(orch, run_dir) == ["completed", "preserved"]
