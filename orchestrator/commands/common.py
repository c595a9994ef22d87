"""Helpers shared by several commands: waiting for runs, formatting numbers and ages, naming
damaged run folders."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Optional, TextIO

from orchestrator.record.tree import Damaged, Run
from orchestrator.record.states import State
from orchestrator.lifecycle.refresh import persist, refresh


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


def wait_for_runs(runs: list[Run], interval: float = 1.0, quiet: bool = False) -> int:
    """Block until every run is terminal; a progress bar on a terminal. 0 only if all COMPLETED."""
    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(runs), desc="runs finished", unit="run", file=sys.stderr)
    last_line = 0.0
    while True:
        views = refresh(runs)
        for v in views:
            persist(v)
        done = [v for v in views if v.state.terminal]
        if bar is not None:
            bar.n = len(done)
            bar.set_postfix_str(", ".join(f"{v.run.run_id[-4:]}:{v.state}" for v in views if not v.state.terminal)[:60])
            bar.refresh()
        elif not quiet and time.monotonic() - last_line > 10:
            last_line = time.monotonic()
            print(f"waiting: {len(done)}/{len(views)} finished", file=sys.stderr)
        if len(done) == len(views):
            break
        time.sleep(interval)
    if bar is not None:
        bar.close()
    bad = [v for v in views if v.state != State.COMPLETED]
    if not quiet:
        for v in views:
            print(f"{v.run.run_id}: {v.state}" + (f" ({v.reason})" if v.reason and v.state != State.COMPLETED else ""))
    return 0 if not bad else 1
