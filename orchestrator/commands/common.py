"""Helpers shared by several commands: formatting numbers and ages, naming damaged run folders."""
from __future__ import annotations

import sys
from typing import Iterable, Optional, TextIO

from orchestrator.record.tree import Damaged


def warn_damaged(damaged: Iterable[Damaged], file: Optional[TextIO] = None) -> int:
    """One warning line per damaged folder (path and what is wrong) on stderr; how many."""
    n = 0
    for d in damaged:
        print(f"warning: damaged run folder {d}", file=file or sys.stderr)
        n += 1
    return n


def fmt_age(seconds: Optional[float]) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds != seconds:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def fmt_num(value: object, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)
