"""Checkpoints: written whole or not at all, rotated, verified on load, loadable for generation.

Layout of a run's `ckpt/` folder::

    ckpt/step-00000500/            one checkpoint per save (`checkpoint.every` steps and at the end)
        model/                     Hugging Face `save_pretrained` folder + the run's tokenizer files,
                                   so `AutoModelForCausalLM.from_pretrained(".../model")` just works
        trainer_state.pt           optimizer, scheduler, sampler position, RNG states of every rank,
                                   step, tokens seen, training seconds so far, early-stopping state
        spec.yaml                  the resolved spec the run was trained with
        manifest.json, COMPLETE    written last: step, metrics, files and their sizes; the marker
    ckpt/best/                     model only (model/ + manifest), replaced when `checkpoint.metric` improves
    ckpt/hf-final/                 model only, written when training ends: `ckpt/hf-final/model` is the
                                   final model for transformers users
    ckpt/.tmp-*                    a save in progress (or one a crash interrupted); never read

A save goes to `ckpt/.tmp-<name>-<pid>/`, each file is fsynced, then the folder is renamed into
place, so a crash mid-write never leaves a folder that looks complete. `CheckpointManager.load_latest`
tries the newest checkpoint and falls back to the previous one when it is damaged.

API for other tools (generation, preserve, compare):

    list_checkpoints(run_dir) -> [CheckpointInfo(path, step, kind, tokens_seen, metrics)]  (complete ones)
    find_checkpoint(run_dir, step=None, best=False) -> CheckpointInfo      (newest when neither given)
    load_for_generation(run_dir, step=None, best=False, device="cpu") -> (model, tokenizer, info)
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.pt"
MODEL_DIR = "model"
BEST = "best"
FINAL = "hf-final"
FORMAT = 1
_STEP_RE = re.compile(r"^step-(\d+)$")


@dataclass
class CheckpointInfo:
    """One complete checkpoint, as listed by its manifest."""

    path: Path
    step: int
    kind: str  # "step" or "best"
    tokens_seen: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR


# ----------------------------------------------------------------------------- helpers
def _fsync_tree(root: Path) -> None:
    """fsync every file under `root` and the folders themselves, so the rename publishes durable data."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _file_sizes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _read_manifest(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("complete") else None


def _info(path: Path, manifest: dict[str, Any]) -> CheckpointInfo:
    return CheckpointInfo(path=path, step=int(manifest["step"]), kind=manifest.get("kind", "step"),
                          tokens_seen=int(manifest.get("tokens_seen", 0)), metrics=manifest.get("metrics", {}),
                          created_at=float(manifest.get("created_at", 0.0)))


def verify(path: Path) -> Optional[str]:
    """None when the checkpoint looks intact, else what is wrong (cheap: manifest and file sizes)."""
    manifest = _read_manifest(path)
    if manifest is None:
        return "no complete manifest.json"
    for rel, size in manifest.get("files", {}).items():
        p = path / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != size:
            return f"{rel} has {p.stat().st_size} bytes, manifest says {size}"
    return None


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`, moving an existing `final` aside first (and deleting it after)."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
    os.rename(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_model(model: torch.nn.Module, out: Path, hf_format: bool = True) -> None:
    """HF `save_pretrained` when the model has it (and hf_format), else a plain `model.pt` state dict."""
    out.mkdir(parents=True, exist_ok=True)
    if hf_format and hasattr(model, "save_pretrained"):
        model.save_pretrained(str(out), safe_serialization=True)
    else:
        torch.save(model.state_dict(), out / "model.pt")


def load_model_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Load weights written by `save_model` into an existing model (tied weights may be absent on disk)."""
    if (model_dir / "model.pt").exists():
        model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
        return
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model weights in {model_dir}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set()
    for key in missing:  # a tied output embedding is saved once, under the input embedding's name
        param = dict(model.named_parameters(remove_duplicate=False)).get(key)
        if param is not None and any(param is p for k, p in model.named_parameters() if k in state):
            tied.add(key)
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {model_dir} does not match the model: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")


# ----------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """This process's RNG states: python, numpy, torch CPU and every CUDA device."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- listing (any process)
def list_checkpoints(run_dir: Path, include_best: bool = True) -> list[CheckpointInfo]:
    """Complete checkpoints of a run (`run_dir` or its `ckpt/` folder), oldest step first, best last."""
    root = Path(run_dir)
    root = root if root.name == "ckpt" else root / "ckpt"
    out: list[CheckpointInfo] = []
    best: list[CheckpointInfo] = []
    if not root.is_dir():
        return out
    for entry in root.iterdir():
        if not entry.is_dir() or not (_STEP_RE.match(entry.name) or entry.name == BEST):
            continue
        manifest = _read_manifest(entry)
        if manifest is None:
            continue
        (best if entry.name == BEST else out).append(_info(entry, manifest))
    out.sort(key=lambda c: c.step)
    return out + (best if include_best else [])


def find_checkpoint(run_dir: Path, step: Optional[int] = None, best: bool = False) -> CheckpointInfo:
    """The checkpoint at `step`, the best one, or the newest intact one."""
    ckpts = list_checkpoints(run_dir)
    if best:
        found = [c for c in ckpts if c.kind == "best"]
        if not found:
            raise FileNotFoundError(f"{run_dir} has no best checkpoint (is checkpoint.keep_best on, has it evaluated?)")
        return found[0]
    steps = [c for c in ckpts if c.kind == "step"]
    if step is not None:
        found = [c for c in steps if c.step == step]
        if not found:
            have = ", ".join(str(c.step) for c in steps) or "none"
            raise FileNotFoundError(f"{run_dir} has no checkpoint at step {step} (steps: {have})")
        return found[0]
    for c in reversed(steps):
        if verify(c.path) is None:
            return c
    raise FileNotFoundError(f"{run_dir} has no complete checkpoint")


def load_for_generation(run_dir: Path, step: Optional[int] = None, best: bool = False,
                        device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any, CheckpointInfo]:
    """(model in eval mode on `device`, the run's tokenizer, which checkpoint) for `orch generate`."""
    from transformers import AutoModelForCausalLM

    from trainers.lm.tokenization import load_tokenizer

    info = find_checkpoint(run_dir, step=step, best=best)
    model = AutoModelForCausalLM.from_pretrained(str(info.model_dir)).to(device).eval()
    return model, load_tokenizer(info.model_dir), info


# ----------------------------------------------------------------------------- the manager (trainer side)
class CheckpointManager:
    """Saves, rotates and reloads one run's checkpoints. Only the main process calls the save methods."""

    def __init__(self, root: Path, keep_last: int = 2, keep_best: bool = True, hf_format: bool = True,
                 spec_text: str = "", tokenizer_dir: Optional[Path] = None) -> None:
        self.root = Path(root)
        self.keep_last, self.keep_best, self.hf_format = keep_last, keep_best, hf_format
        self.spec_text = spec_text
        self.tokenizer_dir = tokenizer_dir

    def clean_partial(self) -> None:
        """Remove the temporary folders of saves a crash interrupted (main process, at start-up)."""
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith((".tmp-", ".old-")):
                    shutil.rmtree(entry, ignore_errors=True)

    def _write(self, name: str, step: int, kind: str, fill: Callable[[Path], None],
               tokens_seen: int, metrics: dict[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            fill(tmp)
            if self.spec_text:
                (tmp / "spec.yaml").write_text(self.spec_text)
            manifest = {"complete": True, "format": FORMAT, "kind": kind, "step": step, "tokens_seen": tokens_seen,
                        "metrics": metrics, "created_at": time.time(), "files": _file_sizes(tmp)}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float) + "\n")
            (tmp / COMPLETE).write_text(f"{step}\n")  # the marker other tools (preserve) look for
            _fsync_tree(tmp)
            final = self.root / name
            _replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _fill_model(self, model: torch.nn.Module, dst: Path) -> None:
        save_model(model, dst / MODEL_DIR, self.hf_format)
        if self.tokenizer_dir is not None and self.tokenizer_dir.is_dir():
            for f in self.tokenizer_dir.iterdir():  # the tokenizer files beside the weights: one loadable folder
                if f.is_file():
                    shutil.copy2(f, dst / MODEL_DIR / f.name)

    def save(self, step: int, model: torch.nn.Module, trainer_state: dict[str, Any],
             tokens_seen: int = 0, metrics: Optional[dict[str, Any]] = None) -> Path:
        """Write `step-<step>/` (model, trainer state, spec), then drop checkpoints beyond `keep_last`."""
        def fill(dst: Path) -> None:
            self._fill_model(model, dst)
            torch.save(trainer_state, dst / TRAINER_STATE)

        path = self._write(f"step-{step:08d}", step, "step", fill, tokens_seen, metrics or {})
        self.rotate()
        return path

    def save_best(self, step: int, model: torch.nn.Module, tokens_seen: int, metrics: dict[str, Any]) -> Path:
        """Replace `best/` (model weights only: it is for generation and comparison, not for resuming)."""
        return self._write(BEST, step, "best", lambda dst: self._fill_model(model, dst), tokens_seen, metrics)

    def save_final(self, step: int, model: torch.nn.Module, tokens_seen: int, metrics: dict[str, Any]) -> Path:
        """`hf-final/`: the trained model + tokenizer in one HF folder (`hf-final/model`), for transformers users."""
        return self._write(FINAL, step, "final", lambda dst: self._fill_model(model, dst), tokens_seen, metrics)

    def rotate(self) -> list[Path]:
        """Delete all but the newest `keep_last` step checkpoints (damaged ones count as nothing)."""
        steps = [c for c in list_checkpoints(self.root, include_best=False)]
        removed = []
        for c in steps[: max(0, len(steps) - self.keep_last)]:
            shutil.rmtree(c.path, ignore_errors=True)
            removed.append(c.path)
        return removed

    def latest_valid(self) -> Optional[CheckpointInfo]:
        """The newest checkpoint whose manifest and file sizes check out (no loading)."""
        for c in reversed(list_checkpoints(self.root, include_best=False)):
            if verify(c.path) is None:
                return c
        return None

    def load_latest(self, apply: Callable[[CheckpointInfo, dict[str, Any]], None],
                    warn: Callable[[str], None] = print) -> Optional[CheckpointInfo]:
        """Load the newest checkpoint that loads; `apply(info, trainer_state)` restores it into the trainer.

        A checkpoint that fails verification or raises while loading is reported through `warn`
        and the previous one is tried, so one damaged file costs `checkpoint.every` steps, not the run.
        """
        for c in reversed(list_checkpoints(self.root, include_best=False)):
            problem = verify(c.path)
            if problem is None:
                try:
                    # weights_only=False: the file holds numpy RNG state; we wrote it ourselves
                    state = torch.load(c.path / TRAINER_STATE, map_location="cpu", weights_only=False)
                    apply(c, state)
                    return c
                except Exception as exc:  # noqa: BLE001 - any failure means: try the previous one
                    problem = f"{type(exc).__name__}: {exc}"
            warn(f"checkpoint {c.path.name} is damaged ({problem}); falling back to the previous one")
        return None
