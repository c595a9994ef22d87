"""Which checkpoint folders a bundle keeps: none, best, last or all, without importing torch.

The trainer writes one folder per checkpoint under `ckpt/` (`step-000500/`, a COMPLETE marker
written last), a best marker (a `best` symlink, a `best/` folder, or a `best.json`/`BEST` file
naming the folder) and `hf-final/`. Only names, markers and small JSON files are read here, so
the control plane stays light; a folder without its COMPLETE marker (a torn write) is never
chosen as best or last.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.record.atomicio import read_json

POLICIES = ("none", "best", "last", "all")
_STEP = re.compile(r"(?:^|[-_])(?:step|ckpt|checkpoint|iter)?[-_]?(\d+)$", re.I)
_MARKERS = ("COMPLETE", ".complete", "COMPLETE.json")
_FINAL = ("hf-final", "hf_final", "final", "hf")
_BEST_FILES = ("best.json", "BEST.json", "best", "BEST", "best.txt", "BEST.txt")
_LAST_LINKS = ("last", "latest", "LAST", "LATEST")


@dataclass
class Selection:
    """Folders (relative to ckpt/) to keep, what role each plays, and why choices were made."""

    folders: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # top-level marker files under ckpt/
    roles: dict[str, str] = field(default_factory=dict)  # best/last/final -> folder
    notes: list[str] = field(default_factory=list)


def step_of(name: str) -> int | None:
    m = _STEP.search(name)
    return int(m.group(1)) if m else None


def _complete(d: Path) -> bool:
    return any((d / m).exists() for m in _MARKERS)


def _inside_ckpt(ckpt: Path, target: Path) -> str | None:
    """The folder name under ckpt/ that `target` resolves to, or None when it leaves ckpt/."""
    try:
        rel = target.resolve().relative_to(ckpt.resolve())
    except (ValueError, OSError):
        return None
    parts = rel.parts
    return parts[0] if len(parts) == 1 else None


def _named_by(value: Any, folders: dict[str, Path], by_step: dict[int, str]) -> str | None:
    """Resolve a marker's content ('step-000500', 'ckpt/step-000500', 500, {'step': 500})."""
    if isinstance(value, dict):
        for key in ("dir", "path", "folder", "name", "checkpoint", "step"):
            if key in value:
                found = _named_by(value[key], folders, by_step)
                if found:
                    return found
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return by_step.get(value)
    if isinstance(value, str):
        text = value.strip().rstrip("/")
        name = text.rsplit("/", 1)[-1]
        if name in folders:
            return name
        if text.isdigit():
            return by_step.get(int(text))
    return None


def select(ckpt: Path, policy: str, metrics: dict[str, Any] | None = None) -> Selection:
    """Pick checkpoint folders under `ckpt` for `policy`; symlinks are read, never followed out."""
    sel = Selection()
    if policy == "none":
        return sel
    try:
        entries = [e for e in os.scandir(ckpt) if not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        sel.notes.append("the run has no ckpt/ folder")
        return sel
    folders = {e.name: Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)}
    links = {e.name: Path(e.path) for e in entries if e.is_symlink()}
    sel.files = sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
    any_marker = any(_complete(p) for p in folders.values())
    usable = {n: p for n, p in folders.items() if _complete(p) or not any_marker}
    for n in sorted(set(folders) - set(usable)):
        sel.notes.append(f"ckpt/{n} has no COMPLETE marker (torn write): not chosen as best or last")
    by_step = {s: n for n, s in ((n, step_of(n)) for n in sorted(usable)) if s is not None}

    last = by_step[max(by_step)] if by_step else None
    for name in _LAST_LINKS:
        if name in links:
            last = _inside_ckpt(ckpt, links[name]) or last
    final = next((n for n in _FINAL if n in usable), None)
    best = _find_best(ckpt, usable, links, by_step, metrics or {})
    if last:
        sel.roles["last"] = last
    if final:
        sel.roles["final"] = final
    if best:
        sel.roles["best"] = best

    if policy == "all":
        sel.folders = sorted(folders)
    elif policy == "best":
        if not best:
            best = last or final
            if best:
                sel.notes.append(f"no best-checkpoint marker found: keeping ckpt/{best} (the newest) as best")
                sel.roles["best"] = best
        sel.folders = [best] if best else []
    elif policy == "last":
        sel.folders = [f for f in dict.fromkeys([last, final]) if f]
    if not sel.folders and policy != "all":
        sel.notes.append(f"--checkpoints {policy}: no usable checkpoint folder under ckpt/")
    sel.roles = {r: f for r, f in sel.roles.items() if f in sel.folders}
    return sel


def _find_best(ckpt: Path, usable: dict[str, Path], links: dict[str, Path],
               by_step: dict[int, str], metrics: dict[str, Any]) -> str | None:
    for name, link in links.items():
        if name.lower().startswith("best"):
            target = _inside_ckpt(ckpt, link)
            if target in usable:
                return target
    for name in usable:
        if name.lower() == "best" or name.lower().startswith("best-") or name.lower().startswith("best_"):
            return name
    for fname in _BEST_FILES:
        p = ckpt / fname
        if p.is_file() and not p.is_symlink() and p.stat().st_size < 65536:
            data = read_json(p)
            if data is None:
                try:
                    data = p.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError):
                    continue
            found = _named_by(data, usable, by_step)
            if found:
                return found
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    for key in ("checkpoint", "ckpt", "step"):
        if key in best:
            found = _named_by(best[key], usable, by_step)
            if found:
                return found
    return None
