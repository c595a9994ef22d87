"""The local backend gives SLURM's semantics with real processes and real signals.

Every test drives the `orch` CLI as a subprocess on tiny `lm` runs (CPU, a few seconds each).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.backends.local.submit import job_alive
from tests.conftest import REPO, Orch, wait_until

TINY = """\
name: {name}
model: {{arch: gpt2, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 32}}
data: {{builtin: arith}}
train: {{max_steps: {steps}, batch_size: 8, lr: 3.0e-3, warmup_steps: 2, log_every: 5}}
eval: {{every: {eval_every}, batches: 2}}
checkpoint: {{every: {ckpt_every}}}
"""


def tiny(tmp_path: Path, name: str = "tiny", steps: int = 30, eval_every: int = 10, ckpt_every: int = 10, extra: str = "") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(TINY.format(name=name, steps=steps, eval_every=eval_every, ckpt_every=ckpt_every) + extra)
    return p


def run_json(orch: Orch, run_id: str) -> dict[str, Any]:
    [path] = list(orch.results.glob(f"*/{run_id}/run.json"))
    return json.loads(path.read_text())


def status_of(orch: Orch, run_id: str) -> dict[str, Any]:
    [row] = orch.json("status", run_id)
    return row


def heartbeat_step(orch: Orch, run_id: str) -> int:
    paths = list(orch.results.glob(f"*/{run_id}/heartbeat.json"))
    try:
        return int(json.loads(paths[0].read_text()).get("step") or 0) if paths else 0
    except (json.JSONDecodeError, FileNotFoundError):
        return 0


def submit(orch: Orch, spec: Path, *args: str) -> list[dict[str, Any]]:
    return orch.json("submit", str(spec), *args)


def test_submit_wait_completes_and_status_shows_progress(orch: Orch, tmp_path: Path) -> None:
    res = orch("submit", str(tiny(tmp_path, steps=20)), "--wait", "--json", timeout=300)
    [row] = json.loads(res.stdout)
    assert set(row) >= {"run_id", "run_dir", "backend", "job_id"}
    s = status_of(orch, row["run_id"])
    assert s["state"] == "COMPLETED" and s["step"] == 20 and s["total_steps"] == 20
    assert s["metrics"]["val_loss"] > 0 and s["attempts"] == 1
    rec = run_json(orch, row["run_id"])
    assert rec["attempts"][0]["exit_code"] == 0 and rec["attempts"][0]["host"]
    run_dir = Path(row["run_dir"])
    for rel in ("spec.yaml", "provenance.json", "exit.json", "logs/stdout-1.log", "logs/stderr-1.log",
                "logs/train_diagnostics.jsonl", "eval/metrics_history.jsonl", "eval/metrics.json"):
        assert (run_dir / rel).exists(), rel
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["packages"]["torch"] and "HF_TOKEN" not in json.dumps(prov)
    out = orch("logs", row["run_id"], "--training").stdout
    assert "step" in out


def test_job_survives_cli_kill_and_cancel_stops_job_and_children(orch: Orch, tmp_path: Path) -> None:
    spec = tiny(tmp_path, steps=100000, eval_every=1000, ckpt_every=1000)
    cli = subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", str(spec), "--wait", "--json"],
                           cwd=REPO, env=orch.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_id = wait_until(lambda: [p.name for p in orch.results.glob("tiny/*") if (p / "run.json").exists()], 60, "run folder")[0]
    wait_until(lambda: heartbeat_step(orch, run_id) > 0, 120, "training to start")
    cli.send_signal(signal.SIGKILL)  # the user's terminal dies
    cli.wait()
    time.sleep(1.0)
    s = status_of(orch, run_id)
    assert s["state"] == "RUNNING", s
    job_id = s["job_id"]
    trainer_pid = json.loads(next(orch.results.glob(f"tiny/{run_id}/heartbeat.json")).read_text())["pid"]
    assert job_alive(job_id) and os.path.exists(f"/proc/{trainer_pid}")
    before = heartbeat_step(orch, run_id)
    wait_until(lambda: heartbeat_step(orch, run_id) > before, 60, "training to go on without the CLI")
    orch("cancel", run_id)
    assert not job_alive(job_id)
    wait_until(lambda: not os.path.exists(f"/proc/{trainer_pid}") or open(f"/proc/{trainer_pid}/stat").read().split()[2] == "Z",
               30, "trainer process to end")
    assert status_of(orch, run_id)["state"] == "CANCELLED"
    assert run_json(orch, run_id)["state"] == "CANCELLED"


def test_time_limit_warns_checkpoints_requeues_and_resumes(orch: Orch, tmp_path: Path) -> None:
    """resources.time with a warning signal, as `sbatch --signal=B:USR1@grace` + --requeue do on SLURM."""
    # 12 s of each attempt before the warning, and a 10 s training budget summed over attempts: the
    # first attempt cannot finish (start-up eats into it), so it must checkpoint, requeue and resume.
    extra = ("resources: {time: '00:00:24', signal: USR1, signal_grace: 12}\n"
             "retry: {max_attempts: 6, on: [timeout], backoff: 0}\n")
    spec = tiny(tmp_path, "limited", steps=100000, eval_every=1000, ckpt_every=100000, extra=extra)
    [row] = submit(orch, spec, "--set", "train.max_time=10")  # training seconds over all attempts
    run_id = row["run_id"]
    wait_until(lambda: run_json(orch, run_id)["state"] in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"), 300, "the run to end")
    rec = run_json(orch, run_id)
    assert rec["state"] == "COMPLETED", rec
    first, second = rec["attempts"][0], rec["attempts"][1]
    assert first["cause"] == "timeout" and first["exit_code"] == 75  # checkpointed on the warning signal
    assert second["reason"] == "requeue"
    diag = [json.loads(l) for l in next(orch.results.glob(f"limited/{run_id}/logs/train_diagnostics.jsonl")).read_text().splitlines() if l.strip()]
    steps = [d["step"] for d in diag]
    assert steps == sorted(steps) and len(set(steps)) == len(steps), "the second attempt continued, it did not restart"
    metrics = json.loads(next(orch.results.glob(f"limited/{run_id}/eval/metrics.json")).read_text())
    assert "max_time" in str(metrics.get("stop_reason"))


def test_time_limit_without_retry_ends_timeout(orch: Orch, tmp_path: Path) -> None:
    extra = "resources: {time: '00:00:12', signal_grace: 5}\nretry: {max_attempts: 1}\n"
    [row] = submit(orch, tiny(tmp_path, "short", steps=100000, eval_every=1000, ckpt_every=100000, extra=extra))
    wait_until(lambda: run_json(orch, row["run_id"])["state"] not in ("QUEUED", "RUNNING", "PENDING"), 120, "timeout")
    rec = run_json(orch, row["run_id"])
    assert rec["state"] == "TIMEOUT" and len(rec["attempts"]) == 1
    assert list(orch.results.glob(f"short/{row['run_id']}/ckpt/step-*")), "the warning signal made a checkpoint"


def test_sweep_respects_max_parallel(orch: Orch, tmp_path: Path) -> None:
    spec = tiny(tmp_path, "sweep", steps=10, extra="sweep: {grid: {train.lr: [0.001, 0.002, 0.003]}, max_parallel: 1}\n")
    res = orch("submit", str(spec), "--wait", "--json", timeout=400)
    rows = json.loads(res.stdout)
    assert len(rows) == 3
    spans = []
    for row in rows:
        rec = run_json(orch, row["run_id"])
        assert rec["state"] == "COMPLETED" and rec["sweep_id"] == run_json(orch, rows[0]["run_id"])["sweep_id"]
        att = rec["attempts"][0]
        spans.append((att["started_at"], att["ended_at"]))
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"runs overlapped: {spans}"


def test_pipeline_second_stage_waits_and_is_skipped_when_first_fails(orch: Orch, tmp_path: Path) -> None:
    first = tiny(tmp_path, "stage1", steps=10)
    second = tiny(tmp_path, "stage2", steps=10, extra="after: [stage1]\n")
    rows = orch.json("submit", str(first), str(second), "--wait", timeout=400)
    recs = {r["name"]: run_json(orch, r["run_id"]) for r in rows}
    assert recs["stage1"]["state"] == recs["stage2"]["state"] == "COMPLETED"
    assert recs["stage2"]["attempts"][0]["started_at"] >= recs["stage1"]["attempts"][0]["ended_at"]
    # now a first stage that fails at run time: a data file that is not text
    junk = tmp_path / "junk.txt"
    junk.write_bytes(bytes(range(128, 256)) * 64)
    bad = tiny(tmp_path, "stage1", steps=10)
    bad.write_text(bad.read_text().replace("{builtin: arith}", f"{{path: {junk}}}"))
    rows = orch.json("submit", str(bad), str(second), "--wait", check=1, timeout=400)
    recs = {r["name"]: run_json(orch, r["run_id"]) for r in rows}
    assert recs["stage1"]["state"] == "FAILED"
    assert recs["stage1"]["failure"]["class"] == "data_error", recs["stage1"]["failure"]
    assert recs["stage2"]["state"] == "CANCELLED" and "dependency" in recs["stage2"]["failure"]["summary"]
    assert not recs["stage2"]["attempts"][0].get("started_at"), "the second stage never ran"


def test_resume_continues_from_checkpoint(orch: Orch, tmp_path: Path) -> None:
    [row] = submit(orch, tiny(tmp_path, "res", steps=100000, eval_every=1000, ckpt_every=5))
    run_id = row["run_id"]
    wait_until(lambda: list(orch.results.glob(f"res/{run_id}/ckpt/step-*")), 120, "a checkpoint")
    orch("cancel", run_id)
    rec = run_json(orch, run_id)
    assert rec["state"] == "CANCELLED"
    stopped_at = heartbeat_step(orch, run_id)
    spec_path = next(orch.results.glob(f"res/{run_id}/spec.yaml"))
    spec_path.write_text(spec_path.read_text().replace("max_steps: 100000", f"max_steps: {stopped_at + 10}"))
    orch("resume", run_id)
    wait_until(lambda: run_json(orch, run_id)["state"] == "COMPLETED", 120, "the resumed run to complete")
    rec = run_json(orch, run_id)
    assert len(rec["attempts"]) == 2 and rec["resumes"][0]["from_state"] == "CANCELLED"
    log = next(orch.results.glob(f"res/{run_id}/logs/stdout-2.log")).read_text() + \
        next(orch.results.glob(f"res/{run_id}/logs/training.log")).read_text()
    assert "resum" in log.lower()
    res = orch("resume", run_id, check=2)
    assert "already COMPLETED" in res.stderr


def test_lm_run_that_diverges_stops_and_is_classified(orch: Orch, tmp_path: Path) -> None:
    """A real NaN: an absurd learning rate blows the weights up; the trainer stops, never checkpoints NaN."""
    spec = tiny(tmp_path, "nan", steps=400, eval_every=1000, ckpt_every=1000)
    spec.write_text(spec.read_text().replace("lr: 3.0e-3", "lr: 1.0e+30").replace("warmup_steps: 2", "warmup_steps: 0"))
    res = orch("submit", str(spec), "--set", "train.grad_clip=null", "--set", "train.min_lr=0",
               "--wait", "--json", check=1, timeout=300)
    [row] = json.loads(res.stdout)
    rec = run_json(orch, row["run_id"])
    assert rec["state"] == "FAILED", rec
    assert rec["stop_reason"].startswith("diverged"), rec["stop_reason"]
    assert rec["failure"]["class"] == "diverged", rec["failure"]
    diag = [json.loads(l) for l in next(orch.results.glob(f"nan/{row['run_id']}/logs/train_diagnostics.jsonl")).read_text().splitlines()]
    assert diag[-1]["nonfinite"] and diag[-1]["step"] < 400
    assert not list(orch.results.glob(f"nan/{row['run_id']}/ckpt/step-*")), "a NaN model is never checkpointed"
    s = status_of(orch, row["run_id"])
    assert s["failure"] == "diverged"
