"""Live progress of runs, for `orch submit --wait` and `orch status --watch`.

On a terminal the runs' table is redrawn in place (`Live`), fitted to the terminal's width. In a
pipe or a file (`PipeLog`) each run gets one line when its state changes or its progress crosses
another tenth (`EVERY`), never the same line twice: a log of a long run stays short and readable.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from orchestrator.commands.common import fmt_age, fmt_num
from orchestrator.commands.runrows import fmt_pct, fmt_rate, note, short_ids, summarize, table
from orchestrator.commands.table import cut, fit, width_for
from orchestrator.lifecycle.refresh import persist, refresh
from orchestrator.record.states import State
from orchestrator.record.tree import Run

EVERY = 0.1  # a piped log prints a run again after each tenth of its steps


def event_line(s: dict[str, Any], short: str) -> str:
    """One run's progress in a line: `3f2a quickstart RUNNING 120/200 60% loss 2.31 val 2.40 ...`."""
    parts = [short, str(s.get("name") or "-"), s["state"]]
    if s.get("step") is not None:
        parts.append(f"{s['step']}/{s.get('total_steps') or '?'} ({fmt_pct(s)}%)" if s.get("progress") is not None
                     else f"step {s['step']}")
    m = s.get("metrics") or {}
    for label, key in (("loss", "train_loss"), ("val", "val_loss")):
        if m.get(key) is not None:
            parts.append(f"{label} {fmt_num(m[key])}")
    if s["state"] in ("RUNNING", "STALLED"):
        if s.get("tokens_per_sec") is not None:
            parts.append(f"{fmt_rate(s['tokens_per_sec'])} tok/s")
        if s.get("eta_s") is not None:
            parts.append(f"ETA {fmt_age(s['eta_s'])}")
    why = note(s)
    if why:
        parts.append(f"({why})")
    return "  ".join(parts)


class PipeLog:
    """Lines for a pipe: a run is printed when its state or its progress tenth changes, and never
    twice with the same content."""

    def __init__(self, every: float = EVERY) -> None:
        self.every = every
        self.seen: dict[str, tuple[str, int, str]] = {}

    def lines(self, summaries: Sequence[dict[str, Any]], ids: dict[str, str], width: int) -> list[str]:
        out = []
        stamp = time.strftime("%H:%M:%S")
        for s in summaries:
            p = s.get("progress")
            bucket = int(min(p, 1.0) / self.every + 1e-9) if isinstance(p, (int, float)) else -1
            line = cut(event_line(s, ids.get(s["run_id"], s["run_id"])), width - len(stamp) - 2)
            before = self.seen.get(s["run_id"])
            if before is not None and (before[:2] == (s["state"], bucket) or before[2] == line):
                continue
            self.seen[s["run_id"]] = (s["state"], bucket, line)
            out.append(f"{stamp}  {line}")
        return out


class Live:
    """A block of lines redrawn in place on a terminal (cursor up, rewrite, clear the rest)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.height = 0

    def draw(self, lines: Sequence[str]) -> None:
        out = [f"\033[{self.height}F"] if self.height else []
        out += [f"{line}\033[K\n" for line in lines]
        out.append("\033[J")
        self.stream.write("".join(out))
        self.stream.flush()
        self.height = len(lines)


def screen(summaries: Sequence[dict[str, Any]], ids: dict[str, str], width: int, height: int,
           footer: str) -> list[str]:
    """The table for a live view: as many rows as the terminal holds (unfinished runs first), a footer."""
    room = max(1, height - 3)
    shown = list(summaries)
    if len(shown) > room:
        shown = sorted(shown, key=lambda s: _finished(s["state"]))
        footer = f"{footer}  (+{len(summaries) - room + 1} more not shown)"
        shown = shown[: room - 1]
    columns, rows = table(shown, ids=ids)
    return fit(columns, rows, width) + [cut(footer, width)]


def _finished(state: str) -> bool:
    try:
        return State(state).terminal
    except ValueError:  # DAMAGED
        return True


def counts(summaries: Sequence[dict[str, Any]]) -> str:
    tally: dict[str, int] = {}
    for s in summaries:
        tally[s["state"]] = tally.get(s["state"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))


def wait_for_runs(runs: list[Run], root: Path, interval: float = 1.0, quiet: bool = False) -> int:
    """Block until every run is terminal, showing each run's progress (step/total, loss, tok/s, ETA)
    on stderr: redrawn in place on a terminal, one line per change in a pipe. Then one result line
    per run on stdout. 0 only if all COMPLETED."""
    err = sys.stderr
    tty = not quiet and err.isatty()
    ids = short_ids(root, [r.run_id for r in runs])
    live, log = (Live(err) if tty else None), PipeLog()
    while True:
        views = refresh(runs)
        for v in views:
            persist(v)
        summaries = [summarize(v) for v in views]
        done = sum(v.state.terminal for v in views)
        if live is not None:
            height = os.get_terminal_size(err.fileno()).lines if err.isatty() else 24
            footer = f"{done}/{len(views)} finished  {time.strftime('%H:%M:%S')}  (Ctrl-C stops waiting, not the runs)"
            live.draw(screen(summaries, ids, width_for(err), height, footer))
        elif not quiet:
            for line in log.lines(summaries, ids, width_for(err)):
                print(line, file=err, flush=True)
        if done == len(views):
            break
        time.sleep(interval)
    bad = [v for v in views if v.state != State.COMPLETED]
    if not quiet:
        for v in views:
            print(f"{v.run.run_id}: {v.state}" + (f" ({v.reason})" if v.reason and v.state != State.COMPLETED else ""))
    return 0 if not bad else 1
