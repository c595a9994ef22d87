"""A job's processes, found through /proc, and one way to signal all of them.

Launchers start their workers in sessions of their own (torchrun, under `accelerate launch`, gives
each worker a new session so it can kill it as a group), so a signal sent to the launcher's process
group never reaches the trainers. Walking the parent links finds them wherever they are.
"""
from __future__ import annotations

import os
from typing import Optional


def _stat(pid: int | str) -> Optional[list[str]]:
    """The fields of /proc/<pid>/stat after "(comm)": [state, ppid, pgrp, ...], or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].decode("ascii", "replace").split()


def descendants(pid: int) -> list[int]:
    """Every living process below `pid` (children first), from one scan of /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat(entry)
        if fields and len(fields) > 1 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def catches(pid: int, sig: int) -> Optional[bool]:
    """Whether `pid` has a handler installed for `sig` (SigCgt in /proc/<pid>/status); None if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def signal_tree(pid: int, sig: int) -> list[int]:
    """Send `sig` to `pid`'s process group (`pid` leads it) and to every descendant in another group;
    returns the descendants signalled that way. Processes that ended meanwhile are skipped."""
    # Found before any signal: a launcher that dies of it leaves its workers to init, out of the scan's reach.
    others = [c for c in descendants(pid) if (_stat(c) or ["", "", str(pid)])[2] != str(pid)]
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    sent = []
    for child in others:
        try:
            os.kill(child, sig)
            sent.append(child)
        except (ProcessLookupError, PermissionError):
            pass
    return sent
