"""The heartbeat a job refreshes while it works, so status can tell RUNNING from STALLED.

It is one small JSON file replaced atomically (no fsync: losing the last beat on a power cut
is harmless), holding the progress `orch status` shows without opening any log. A beat carries
the writer's earlier progress forward (a beat at an evaluation or a checkpoint that names only
its phase keeps the last train loss, tokens/s and ETA), so status never goes blank mid-run.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from orchestrator.record.atomicio import atomic_write_json, read_json


class Heartbeat:
    """Throttled writer: `beat()` is cheap to call every step; it writes at most every `interval` s.

    Each beat writes the progress given so far merged with this beat's (newer values win), so
    fields measured only while training survive the phases that do not measure them."""

    def __init__(self, path: Path, interval: float = 5.0) -> None:
        self.path = Path(path)
        self.interval = interval
        self._last = 0.0
        self._host = socket.gethostname()
        self._progress: dict[str, Any] = {}

    def beat(self, force: bool = False, **progress: Any) -> bool:
        now = time.time()
        if not force and now - self._last < self.interval:
            return False
        self._last = now
        self._progress.update(progress)
        atomic_write_json(self.path, {"time": now, "host": self._host, "pid": os.getpid(), **self._progress},
                          fsync=False)
        return True


def read_heartbeat(path: Path) -> dict[str, Any]:
    """The last beat; {} when missing, unreadable or not a JSON object (a garbage file is no beat)."""
    hb = read_json(path, default={})
    return hb if isinstance(hb, dict) else {}


def heartbeat_age(hb: dict[str, Any], now: float | None = None) -> float | None:
    t = hb.get("time")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or t != t:
        return None  # no beat, or a garbage time
    return max(0.0, (now or time.time()) - float(t))
