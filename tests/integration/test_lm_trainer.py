"""The lm trainer end to end, the way a job runs it: `python -m trainers RUN_DIR` in a real process.

Tiny models (d_model 32, 2 layers, block 32) on the builtin arithmetic corpus, one thread each,
so every run takes a few seconds on a 2-core machine.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from orchestrator.record.atomicio import read_json, read_jsonl
from orchestrator.record.paths import RunPaths
from orchestrator.record.tree import ResultsRoot
from orchestrator.spec.schema import deep_merge, spec_from_data, spec_to_yaml
from orchestrator.record.states import EXIT_REQUEUE

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "name": "tiny",
    "trainer": "lm",
    "seed": 7,
    "model": {"arch": "gpt2", "n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 32, "dropout": 0.1},
    "tokenizer": {"type": "char"},
    "data": {"builtin": "arith"},
    "train": {"max_steps": 40, "batch_size": 8, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5, "log_every": 1,
              "device": "cpu"},
    "eval": {"every": 20, "batches": 4, "batch_size": 8},
    "checkpoint": {"every": 20, "keep_last": 3},
}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def make_run(results: Path, base: dict[str, Any] = BASE, **over: Any) -> RunPaths:
    """A run folder as `orch submit` leaves it: resolved spec.yaml + run.json."""
    spec = spec_from_data(deep_merge(base, over), "make_run")  # the trainer's own schema, as at submit
    run = ResultsRoot(results).create_run(spec.name, {"backend": "local"})
    run.paths.spec.write_text(spec_to_yaml(spec))
    return run.paths


def env_for(paths: RunPaths, attempt: int = 1) -> dict[str, str]:
    return {**os.environ, "ORCH_RUN_DIR": str(paths.root), "ORCH_ATTEMPT": str(attempt),
            "ORCH_RESULTS_ROOT": str(paths.root.parent.parent), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO)}


def start(paths: RunPaths, attempt: int = 1, launch: Optional[list[str]] = None) -> subprocess.Popen[str]:
    cmd = (launch or [sys.executable]) + ["-m", "trainers", str(paths.root)]
    return subprocess.Popen(cmd, cwd=REPO, env=env_for(paths, attempt), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def train(paths: RunPaths, attempt: int = 1, expect: int = 0, launch: Optional[list[str]] = None) -> str:
    proc = start(paths, attempt, launch)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}\n{out}\n{err[-4000:]}"
    return out


def losses(paths: RunPaths) -> dict[int, float]:
    """Per-step training loss; a step logged twice (killed after it, redone on resume) keeps the last."""
    return {r["step"]: r["loss"] for r in read_jsonl(paths.diagnostics)}


def wait_for(predicate: Any, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited {proc.returncode} early:\n{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.01)


def set_spec(paths: RunPaths, **over: Any) -> None:
    """Change the budget of an existing run (as a user extending a run would)."""
    data = deep_merge(yaml.safe_load(paths.spec.read_text()), over)
    paths.spec.write_text(spec_to_yaml(spec_from_data(data, "set_spec")))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """One completed 40-step run, shared by the read-only tests below."""
    paths = make_run(tmp_path_factory.mktemp("results"), eval={"prompts": ["12+"], "max_new_tokens": 8})
    train(paths)
    return paths


# ------------------------------------------------------------------------------------------------
def test_completed_run_writes_every_artefact(finished: RunPaths) -> None:
    m = read_json(finished.metrics)
    assert m["stop_reason"] == "max_steps" and m["steps"] == 40
    assert m["tokens_seen"] == 40 * 8 * 32
    assert m["params"]["total"] > m["params"]["non_embedding"] > 0
    assert m["chinchilla"]["optimal_tokens"] == 20 * m["params"]["total"]
    assert m["final"]["step"] == 40 and m["best"]["val_loss"] <= m["final"]["val_loss"]
    history = read_jsonl(finished.metrics_history)
    assert [r["step"] for r in history] == [20, 40]
    assert all({"train_loss", "val_loss", "val_ppl", "train_val_gap"} <= r.keys() for r in history)
    diags = read_jsonl(finished.diagnostics)
    assert [r["step"] for r in diags] == list(range(1, 41))
    assert {"loss", "lr", "grad_norm", "step_time", "tokens_per_sec", "nonfinite", "tokens_seen"} <= diags[0].keys()
    assert read_json(finished.run_json)["stop_reason"] == "max_steps"
    assert read_json(finished.run_json)["params"] == m["params"]
    samples = read_jsonl(finished.samples)
    assert samples[0]["prompt"] == "12+"
    assert (finished.ckpt / "hf-final" / "model" / "config.json").exists()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(finished.ckpt / "hf-final" / "model"))
    assert model.config.n_embd == 32
    assert "training from step 0" in finished.training_log.read_text()


CUDA_ONLY = "fp16 mixed precision is CUDA-only in Accelerate (on CPU: no autocast, no GradScaler)"


@pytest.mark.parametrize("precision,device", [
    ("fp32", "cpu"),
    ("bf16", "cpu"),  # Accelerate's CPU autocast
    pytest.param("fp16", "cuda", marks=pytest.mark.skipif(not _cuda(), reason=CUDA_ONLY)),
])
def test_resume_after_kill9_matches_straight_run(tmp_path: Path, precision: str, device: str) -> None:
    """SIGKILL right after the step-100 checkpoint, resume: every logged loss equals the straight run's.

    The checkpoint carries everything the next steps depend on: weights, AdamW moments, the LR
    schedule, the sampler position, every RNG, and under fp16 the GradScaler's scale.
    """
    over = {"train": {"max_steps": 200, "log_every": 1, "precision": precision, "device": device},
            "checkpoint": {"every": 100}, "eval": {"every": 50}}
    straight = make_run(tmp_path / "a", **over)
    train(straight)

    killed = make_run(tmp_path / "b", **over)
    proc = start(killed)
    wait_for(lambda: (killed.ckpt / "step-00000100" / "COMPLETE").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not killed.metrics.exists(), "the run finished before it was killed"
    train(killed, attempt=2)

    a, b = losses(straight), losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 201))
    worst = max(abs(a[s] - b[s]) for s in a)
    assert worst <= 1e-6, f"resumed run differs by {worst}"
    va = {r["step"]: r["val_loss"] for r in read_jsonl(straight.metrics_history)}
    vb = {r["step"]: r["val_loss"] for r in read_jsonl(killed.metrics_history)}
    assert all(abs(va[s] - vb[s]) <= 1e-6 for s in va)
    assert "resumed from step-00000100" in killed.training_log.read_text()


def test_damaged_newest_checkpoint_falls_back(finished: RunPaths, tmp_path: Path) -> None:
    root = tmp_path / "results" / "tiny"
    shutil.copytree(finished.root, root / finished.root.name)
    paths = RunPaths(root / finished.root.name)
    state = paths.ckpt / "step-00000040" / "state" / "optimizer.bin"
    state.write_bytes(b"\0" * state.stat().st_size)  # same size: the manifest's sha256 tells
    paths.metrics.unlink()
    train(paths, attempt=2)  # as a requeued attempt would: the same spec, so the same schedule
    log = paths.training_log.read_text()
    assert "step-00000040 is damaged (state/optimizer.bin does not match its sha256" in log
    assert "resumed from step-00000020" in log
    second = [r for r in read_jsonl(paths.diagnostics) if r["attempt"] == 2]
    assert [r["step"] for r in second] == list(range(21, 41))
    # the redone steps 21..40 reproduce the first attempt's losses
    first = {r["step"]: r["loss"] for r in read_jsonl(paths.diagnostics) if r["attempt"] == 1}
    assert max(abs(first[r["step"]] - r["loss"]) for r in second) <= 1e-6
    assert read_json(paths.metrics)["steps"] == 40


@pytest.mark.parametrize("configured,sent", [("USR1", signal.SIGUSR1), ("USR2", signal.SIGUSR2),
                                             ("USR1", signal.SIGTERM)])
def test_signal_checkpoints_and_exits_requeue(tmp_path: Path, configured: str, sent: signal.Signals) -> None:
    paths = make_run(tmp_path, train={"max_steps": 5000}, eval={"every": 1000}, checkpoint={"every": 1000},
                     resources={"signal": configured})
    proc = start(paths)
    wait_for(lambda: len(read_jsonl(paths.diagnostics)) >= 5, proc)
    proc.send_signal(sent)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_REQUEUE, err[-3000:]
    rec = read_json(paths.run_json)
    assert rec["stop_reason"] == f"preempted: {sent.name}"
    assert rec["requeue"] == {"attempt": 1, "step": read_jsonl(paths.diagnostics)[-1]["step"]}
    from orchestrator.record.checkpoints import list_checkpoints

    ckpts = list_checkpoints(paths.root, kinds=("step",))
    last_step = read_jsonl(paths.diagnostics)[-1]["step"]
    assert [c.step for c in ckpts] == [last_step]
    assert not paths.metrics.exists()
    if sent == signal.SIGUSR1:  # the requeued attempt continues to the end
        set_spec(paths, train={"max_steps": last_step + 5})
        train(paths, attempt=2)
        assert read_json(paths.run_json)["stop_reason"] == "max_steps"
        assert [r["step"] for r in read_jsonl(paths.diagnostics)][-5:] == list(range(last_step + 1, last_step + 6))


def test_unconfigured_signal_is_not_caught(tmp_path: Path) -> None:
    """With resources.signal USR2, SIGUSR1 keeps its default action (NCCL builds may own it)."""
    paths = make_run(tmp_path, train={"max_steps": 5000}, resources={"signal": "USR2"})
    proc = start(paths)
    wait_for(lambda: len(read_jsonl(paths.diagnostics)) >= 2, proc)
    proc.send_signal(signal.SIGUSR1)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGUSR1


def test_early_stopping_stops_and_says_why(tmp_path: Path) -> None:
    paths = make_run(tmp_path, train={"max_steps": 1000}, eval={"every": 10},
                     checkpoint={"every": 1000}, early_stopping={"patience": 2, "min_delta": 100.0})
    train(paths)
    why = "early_stopping: val_loss did not improve by 100.0 for 2 evals"
    assert read_json(paths.run_json)["stop_reason"].startswith(why)
    m = read_json(paths.metrics)
    assert m["stop_reason"].startswith(why) and m["steps"] == 30
    assert [c.name for c in sorted(paths.ckpt.glob("step-*"))] == ["step-00000030"]


def test_two_processes_match_one(tmp_path: Path) -> None:
    """2 processes on CPU (gloo), batch 8 each == 1 process with batch 16.

    `accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.15 (its simple
    launcher expects mpirun for multi-CPU), so the torchrun-based launcher is used (`--multi_gpu`);
    with train.device cpu the Accelerator then runs MULTI_CPU over gloo.
    """
    over = {"model": {"dropout": 0.0}, "train": {"max_steps": 30}, "eval": {"every": 15}, "checkpoint": {"every": 15}}
    one = make_run(tmp_path / "one", **deep_merge(over, {"train": {"batch_size": 16}}))
    two = make_run(tmp_path / "two", **deep_merge(over, {"train": {"batch_size": 8}}))
    train(one)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 1000)]
    train(two, launch=launch)
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 31))
    worst = max(abs(a[s] - b[s]) for s in a)
    assert worst <= 2e-5, f"2-process losses differ from 1-process by {worst}"
    va, vb = read_json(one.metrics)["final"]["val_loss"], read_json(two.metrics)["final"]["val_loss"]
    assert abs(va - vb) <= 2e-5
    assert read_json(two.metrics)["world_size"] == 2
    assert read_json(two.metrics)["tokens_seen"] == read_json(one.metrics)["tokens_seen"]


def test_two_process_preemption_checkpoints_and_records_requeue(tmp_path: Path) -> None:
    """Under `accelerate launch` the launcher forwards SIGUSR1 (PET_SIGNALS_TO_HANDLE) to both workers;
    they agree on the step (an all-reduce of the stop flags), checkpoint once and record the requeue in run.json (torchrun turns the
    workers' exit 75 into 1, so the record is what tells the job wrapper to requeue)."""
    paths = make_run(tmp_path, train={"max_steps": 5000}, eval={"every": 1000}, checkpoint={"every": 1000})
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(30500 + os.getpid() % 1000)]
    env = {**env_for(paths), "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"}
    proc = subprocess.Popen(launch + ["-m", "trainers", str(paths.root)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(read_jsonl(paths.diagnostics)) >= 12, proc)
    proc.send_signal(signal.SIGUSR1)
    proc.communicate(timeout=120)
    rec = read_json(paths.run_json)
    assert rec["stop_reason"] == "preempted: SIGUSR1"
    step = rec["requeue"]["step"]
    assert [p.name for p in paths.ckpt.glob("step-*")] == [f"step-{step:08d}"]
    assert read_jsonl(paths.diagnostics)[-1]["step"] == step
    manifest = read_json(paths.ckpt / f"step-{step:08d}" / "manifest.json")
    assert {"state/random_states_0.pkl", "state/random_states_1.pkl"} <= manifest["sha256"].keys()  # each process's RNG
    # the requeued attempt: both processes agree on the checkpoint, load it and go on
    set_spec(paths, train={"max_steps": step + 5})
    train(paths, attempt=2, launch=launch[:-1] + [str(31500 + os.getpid() % 1000)])
    assert f"resumed from step-{step:08d}" in paths.training_log.read_text()
    assert [r["step"] for r in read_jsonl(paths.diagnostics) if r["attempt"] == 2] == list(range(step + 1, step + 6))
    assert read_json(paths.metrics)["world_size"] == 2


def test_generation_from_checkpoint_is_deterministic_at_temperature_0(finished: RunPaths) -> None:
    from orchestrator.record.checkpoints import list_checkpoints
    from trainers.framework.checkpoint import load_for_generation
    from trainers.framework.generation import generate

    assert [c.kind for c in list_checkpoints(finished.root)] == ["step", "step", "best", "final"]
    model, tok, info = load_for_generation(finished.root, step=20)
    assert info.step == 20
    first = generate(model, tok, ["1+1=", "99-"], max_new_tokens=12, temperature=0)
    again = generate(model, tok, ["1+1=", "99-"], max_new_tokens=12, temperature=0)
    assert first == again and all(len(t) > 0 for t in first)
    model2, tok2, _ = load_for_generation(finished.root, step=20)
    assert generate(model2, tok2, ["1+1=", "99-"], max_new_tokens=12, temperature=0) == first


def test_custom_trainer_gets_the_same_services(tmp_path: Path) -> None:
    base = {k: v for k, v in BASE.items() if k not in ("model", "tokenizer", "data", "eval")}  # no lm sections
    paths = make_run(tmp_path, base, name="custom", trainer="tests.integration.example_trainer:TinyRegressionTrainer",
                     toy={"width": 8}, train={"max_steps": 60, "lr": 0.05, "log_every": 10},
                     eval={"every": 20}, checkpoint={"every": 20, "keep_last": 2})
    train(paths)
    m = read_json(paths.metrics)
    assert m["stop_reason"] == "max_steps" and m["steps"] == 60
    hist = read_jsonl(paths.metrics_history)
    assert [r["step"] for r in hist] == [20, 40, 60] and hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert [c.name for c in sorted(paths.ckpt.glob("step-*"))] == ["step-00000040", "step-00000060"]
    assert (paths.ckpt / "step-00000060" / "model" / "model.pt").exists()  # not an HF model: plain state dict
    set_spec(paths, train={"max_steps": 80})
    train(paths, attempt=2)
    assert "resumed from step-00000060" in paths.training_log.read_text()
    assert read_json(paths.metrics)["steps"] == 80


def test_broken_spec_exits_1_with_traceback(tmp_path: Path) -> None:
    paths = make_run(tmp_path)
    paths.spec.write_text(paths.spec.read_text().replace("trainer: lm", "trainer: tests.integration.no_such_module:Nope"))
    proc = start(paths)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in err and "no_such_module" in err
