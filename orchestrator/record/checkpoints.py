"""The checkpoint folder format: the one definition every reader and the trainer's writer share (no torch).

Layout of a run's `ckpt/` folder (format 2)::

    ckpt/step-00000500/        a resumable checkpoint: every `checkpoint.every` steps, on a stop signal, at the end
        model/                 the weights: a Hugging Face `save_pretrained` folder with the run's tokenizer files
                               beside them (`model.pt`, a plain state dict, for a model without save_pretrained
                               or with `checkpoint.hf_format: false`)
        state/                 `accelerator.save_state` output: optimizer.bin, scheduler.bin (prepared schedulers),
                               scaler.pt (fp16 GradScaler), random_states_<rank>.pkl (one per process),
                               custom_checkpoint_<i>.pkl (objects registered for checkpointing: the trainer's own
                               state_dict), and under FSDP/DeepSpeed their sharded model and optimizer files
        trainer_state.json     the loop: step, tokens_seen, train_seconds, world_size, best, last_eval, early_stopping
        spec.yaml              the resolved spec the run was trained with
        manifest.json          {"complete": true, "format": 2, "kind": "step", "step", "tokens_seen", "metrics",
                               "created_at", "files": {relative path: bytes}, "sha256": {relative path: hex digest}}
        COMPLETE               the marker (its text: the step); written after the manifest
    ckpt/best/                 the model of the best evaluation by `checkpoint.metric`/`mode` (kind "best"): model/,
                               spec.yaml, manifest.json, COMPLETE; for generation and comparison, not for resuming
    ckpt/hf-final/             the model when training ended (kind "final"): `from_pretrained("ckpt/hf-final/model")`
    ckpt/.tmp-<name>/          a save in progress, or one a crash interrupted: never read, removed at the next start
    ckpt/.old-<name>-<pid>/    a folder being replaced by a newer save of the same name: never read

Every folder is filled under `.tmp-<name>/`, sealed (manifest, marker, fsync) and renamed into place,
so a folder named `step-*`, `best` or `hf-final` is either complete or was damaged later. A checkpoint
is *complete* when its manifest says `complete: true` and the marker exists, and *valid* when, in
addition, every file the manifest lists has its size (`validate`) and, with `deep=True`, its sha256.
Format 1 (orch before Accelerate state) kept `trainer_state.pt` instead of `state/` and
`trainer_state.json` and had no hashes: it lists, validates and loads for generation, but does not resume.

Readers: trainers/framework/checkpoint.py (resume, rotation, generation), orchestrator/checks/judge.py
(`builtin:checkpoint_loadable`), orchestrator/preserve/bundle.py (which folders a bundle keeps).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from orchestrator.record.atomicio import file_mode, replace_dir

FORMAT = 2
MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"
MODEL_DIR = "model"
STATE_DIR = "state"
LOOP_STATE = "trainer_state.json"
SPEC = "spec.yaml"
BEST = "best"
FINAL = "hf-final"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
KINDS = ("step", "best", "final")
POLICIES = ("none", "best", "last", "all")
_STEP_RE = re.compile(r"^step-(\d+)$")
_HASH_CHUNK = 1 << 20


# ----------------------------------------------------------------------------- names
def ckpt_root(path: Path | str) -> Path:
    """The `ckpt/` folder of a run folder (a path that already is a `ckpt/` folder is returned as is)."""
    p = Path(path)
    return p if p.name == "ckpt" else p / "ckpt"


def step_name(step: int) -> str:
    """The folder name of the step checkpoint at `step`: `step-00000500`."""
    return f"step-{step:08d}"


def step_of(name: str) -> Optional[int]:
    """The step of a `step-<N>` folder name, else None."""
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint folder, as its manifest describes it."""

    path: Path
    kind: str  # "step", "best" or "final"
    step: int
    tokens_seen: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    format: int = 1

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR

    @property
    def loop_state_path(self) -> Path:
        return self.path / LOOP_STATE

    @property
    def resumable(self) -> bool:
        """A step checkpoint in this format (optimizer, RNG and loop state beside the weights)."""
        return self.kind == "step" and self.format >= FORMAT


# ----------------------------------------------------------------------------- reading
def read_manifest(folder: Path) -> Optional[dict[str, Any]]:
    """The manifest of a complete checkpoint folder (manifest says complete, marker present), else None."""
    try:
        data = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("complete") is not True or not (folder / COMPLETE).is_file():
        return None
    return data


def _checkpoint(folder: Path, manifest: dict[str, Any]) -> Optional[Checkpoint]:
    kind = "best" if folder.name == BEST else "final" if folder.name == FINAL else "step"
    try:
        step = int(manifest["step"])
        tokens = int(manifest.get("tokens_seen") or 0)
        created = float(manifest.get("created_at") or 0.0)
        fmt = int(manifest.get("format") or 1)
    except (KeyError, TypeError, ValueError):
        return None
    metrics = manifest.get("metrics")
    return Checkpoint(folder, kind, step, tokens,
                      metrics if isinstance(metrics, dict) else {}, created, fmt)


def step_folders(run_or_ckpt: Path | str) -> list[Path]:
    """Every `step-<N>` folder under ckpt/ (complete or not, symlinks never), oldest step first."""
    root = ckpt_root(run_or_ckpt)
    try:
        found = [Path(e.path) for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and step_of(e.name) is not None]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found, key=lambda p: step_of(p.name) or 0)


def list_checkpoints(run_or_ckpt: Path | str, kinds: Iterable[str] = KINDS) -> list[Checkpoint]:
    """Complete checkpoints (no size check): step ones oldest first, then best, then final."""
    root = ckpt_root(run_or_ckpt)
    wanted = set(kinds)
    folders = step_folders(root) if "step" in wanted else []
    folders += [root / name for kind, name in (("best", BEST), ("final", FINAL)) if kind in wanted]
    out = []
    for folder in folders:
        if folder.is_symlink() or not folder.is_dir():
            continue
        manifest = read_manifest(folder)
        info = _checkpoint(folder, manifest) if manifest is not None else None
        if info is not None:
            out.append(info)
    return out


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def validate(folder: Path, deep: bool = False) -> Optional[str]:
    """None when the checkpoint folder is intact, else what is wrong with it.

    Checks the manifest (complete, well formed, paths inside the folder), the COMPLETE marker and the
    size of every listed file; `deep` also compares each file's sha256 when the manifest has them.
    """
    try:
        data = json.loads((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        return "no manifest.json (an interrupted save?)"
    except (OSError, ValueError):
        return "manifest.json is not valid JSON"
    if not isinstance(data, dict) or data.get("complete") is not True:
        return "manifest.json is not marked complete"
    if not (folder / COMPLETE).is_file():
        return "no COMPLETE marker"
    files, hashes = data.get("files"), data.get("sha256") or {}
    if not isinstance(files, dict) or not isinstance(hashes, dict):
        return "manifest.json 'files' or 'sha256' is not a mapping"
    for rel, size in files.items():
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
            return f"the manifest names a path outside the checkpoint: {rel!r}"
        p = folder / rel
        if not p.is_file():
            return f"{rel} is listed in the manifest but missing"
        if not isinstance(size, int) or isinstance(size, bool):
            return f"manifest.json gives {rel} a size that is not a number: {size!r}"
        if p.stat().st_size != size:
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {size}"
    if deep:
        for rel, digest in hashes.items():
            if rel not in files:
                return f"manifest.json hashes {rel!r} but does not list it"
            if _sha256(folder / rel) != digest:
                return f"{rel} does not match its sha256 in the manifest"
    return None


def newest_valid(run_or_ckpt: Path | str, deep: bool = False) -> Optional[Checkpoint]:
    """The newest step checkpoint that validates, else None."""
    for c in reversed(list_checkpoints(run_or_ckpt, kinds=("step",))):
        if validate(c.path, deep) is None:
            return c
    return None


def find(run_or_ckpt: Path | str, step: Optional[int] = None, best: bool = False) -> Checkpoint:
    """The checkpoint at `step`, the best one, or the newest valid step one; FileNotFoundError says why not."""
    where = Path(run_or_ckpt)
    if best:
        found = list_checkpoints(where, kinds=("best",))
        if not found:
            raise FileNotFoundError(f"{where} has no best checkpoint (is checkpoint.keep_best on, has it evaluated?)")
        return found[0]
    steps = list_checkpoints(where, kinds=("step",))
    if step is not None:
        at = [c for c in steps if c.step == step]
        if not at:
            have = ", ".join(str(c.step) for c in steps) or "none"
            raise FileNotFoundError(f"{where} has no checkpoint at step {step} (steps: {have})")
        return at[0]
    newest = newest_valid(where)
    if newest is None:
        raise FileNotFoundError(f"{where} has no complete checkpoint")
    return newest


def best_by_metric(ckpts: Iterable[Checkpoint], metric: str, mode: str = "min") -> Optional[Checkpoint]:
    """The checkpoint whose manifest metrics are best by `metric` (`mode` min or max); ties: the newest."""
    scored = [(float(c.metrics[metric]), c) for c in ckpts
              if isinstance(c.metrics.get(metric), (int, float)) and not isinstance(c.metrics.get(metric), bool)
              and math.isfinite(float(c.metrics[metric]))]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(scored, key=lambda vc: (sign * vc[0], -vc[1].step))[1]


# ----------------------------------------------------------------------------- selection (preserve)
@dataclass
class Selection:
    """Folders (names under ckpt/) a bundle keeps, the role each plays, and why choices were made."""

    folders: list[str] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)  # best/last/final -> folder
    notes: list[str] = field(default_factory=list)


def select(run_or_ckpt: Path | str, policy: str, metric: str = "val_loss", mode: str = "min") -> Selection:
    """The checkpoint folders to keep under `policy`.

    none: nothing. best: `best/`, else the valid step checkpoint whose manifest metrics are best by
    `metric`/`mode`, else the newest valid one (with a note). last: the newest valid step checkpoint
    and `hf-final/`. all: every folder under ckpt/ (hidden `.tmp-`/`.old-` folders and symlinks never).
    Damaged checkpoints (see `validate`, sizes only) are never chosen as best or last.
    """
    if policy not in POLICIES:
        raise ValueError(f"checkpoint policy {policy!r}: use one of {', '.join(POLICIES)}")
    sel = Selection()
    if policy == "none":
        return sel
    root = ckpt_root(run_or_ckpt)
    try:
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        sel.notes.append("the run has no ckpt/ folder")
        return sel
    valid: dict[str, Checkpoint] = {}
    for c in list_checkpoints(root):
        problem = validate(c.path)
        if problem is None:
            valid[c.name] = c
        else:
            sel.notes.append(f"ckpt/{c.name} is damaged ({problem}): not chosen as best or last")
    for name in folders:
        if name not in valid and read_manifest(root / name) is None:
            sel.notes.append(f"ckpt/{name} is not a complete checkpoint (no complete manifest): not chosen as best or last")
    steps = [c for c in valid.values() if c.kind == "step"]
    steps.sort(key=lambda c: c.step)
    last = steps[-1].name if steps else None
    final = FINAL if FINAL in valid else None
    best = BEST if BEST in valid else None
    if best is None:
        by_metric = best_by_metric(steps, metric, mode)
        if by_metric is not None:
            best = by_metric.name
            if policy == "best":
                sel.notes.append(f"no ckpt/best: keeping ckpt/{best}, the best kept step checkpoint by {metric} ({mode})")
    roles = {"best": best, "last": last, "final": final}
    if policy == "all":
        sel.folders = folders
    elif policy == "best":
        if best is None and (last or final):
            best = last or final
            roles["best"] = best
            sel.notes.append(f"no best checkpoint and no {metric} in the manifests: keeping ckpt/{best} (the newest)")
        sel.folders = [best] if best else []
    elif policy == "last":
        sel.folders = [f for f in (last, final) if f]
    if not sel.folders and policy != "all":
        sel.notes.append(f"--checkpoints {policy}: no valid checkpoint under ckpt/")
    sel.roles = {role: f for role, f in roles.items() if f and f in sel.folders}
    return sel


# ----------------------------------------------------------------------------- writing (the trainer)
def tmp_dir(root: Path, name: str) -> Path:
    """Where the save of `name` is filled before `publish`: the same path on every process of a run."""
    return Path(root) / f"{TMP_PREFIX}{name}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root` and the folders themselves, so the rename publishes durable data."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def seal(folder: Path, *, kind: str, step: int, tokens_seen: int = 0, metrics: Optional[dict[str, Any]] = None,
         hashes: bool = True) -> dict[str, Any]:
    """Write the manifest (every file's size and, with `hashes`, sha256) and the COMPLETE marker; fsync all.
    Every file gets the mode the umask gives a new file, as the rest of the run folder has.

    Call it on a filled `tmp_dir` after every process has written its files; returns the manifest.
    """
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind {kind!r}: use one of {', '.join(KINDS)}")
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    files.pop(MANIFEST, None)
    files.pop(COMPLETE, None)
    mode = file_mode()
    for p in files.values():  # safetensors writes model.safetensors 0600 whatever the umask: the team reads it too
        if p.stat().st_mode & 0o777 != mode:
            os.chmod(p, mode)
    manifest = {"complete": True, "format": FORMAT, "kind": kind, "step": int(step), "tokens_seen": int(tokens_seen),
                "metrics": metrics or {}, "created_at": time.time(),
                "files": {rel: p.stat().st_size for rel, p in files.items()}}
    if hashes:
        manifest["sha256"] = {rel: _sha256(p) for rel, p in files.items()}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float) + "\n")
    (folder / COMPLETE).write_text(f"{step}\n")
    _fsync_tree(folder)
    return manifest


def restate_file(manifest: Any, rel: str, data: bytes) -> bool:
    """Make a loaded manifest describe `data` as the content of `rel` (size, sha256); False if it does not list it."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or rel not in files:
        return False
    files[rel] = len(data)
    hashes = manifest.get("sha256")
    if isinstance(hashes, dict) and rel in hashes:
        hashes[rel] = hashlib.sha256(data).hexdigest()
    return True


def publish(tmp: Path, final: Path) -> None:
    """Rename the sealed `tmp` to `final`; an existing `final` is moved aside first and deleted after."""
    replace_dir(tmp, final, final.with_name(f"{OLD_PREFIX}{final.name}-{os.getpid()}"), sync=_fsync_dir)


def clean_partial(run_or_ckpt: Path | str) -> list[Path]:
    """Remove `.tmp-*` and `.old-*` folders (saves a crash interrupted); call before any save starts."""
    root = ckpt_root(run_or_ckpt)
    removed = []
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith((TMP_PREFIX, OLD_PREFIX)) and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def rotate(run_or_ckpt: Path | str, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete step checkpoints (incomplete folders are left alone)."""
    steps = list_checkpoints(run_or_ckpt, kinds=("step",))
    doomed = steps[: max(0, len(steps) - keep_last)]
    for c in doomed:
        shutil.rmtree(c.path, ignore_errors=True)
    return [c.path for c in doomed]
