"""`orch status [RUN...] [--json] [--watch S] [--state S] [--name N] [--all]`: every run at a glance.

Reads only small files per run (run.json, heartbeat.json, the last line of the metrics history
read from the end) and asks each backend once per call. CHECKS is the verdict summary the last
`orch check` (or monitor pass) stored in run.json (`checks.judge.summarize`: `7/8 pass`,
`1/2 pass FAILED`), the very string `orch check` printed; `-` before any check.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any, Optional

from orchestrator.record.atomicio import tail_jsonl
from orchestrator.errors import BackendUnavailable, UserError
from orchestrator.record.heartbeat import heartbeat_age
from orchestrator.lifecycle import refresh as refresh_module
from orchestrator.record import index
from orchestrator.record.tree import Damaged, ResultsRoot, Run
from orchestrator.record.states import State
from orchestrator.lifecycle.refresh import RunView, checks_summary, refresh
from orchestrator.commands.common import fmt_age, fmt_num

COLUMNS = ("RUN", "STATE", "STEP", "%", "TRAIN", "VAL", "TOK/S", "ETA", "BEAT", "CHECKS", "NOTE")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids, unique prefixes or run names (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until interrupted")
    p.add_argument("--state", action="append", default=[], metavar="S", help="only runs in state S, or DAMAGED folders (repeatable)")
    p.add_argument("--name", action="append", default=[], metavar="N", help="only runs of experiment N (repeatable)")
    p.add_argument("--no-poll", action="store_true", help="do not ask the backends; run folders only")


def summarize(view: RunView) -> dict[str, Any]:
    rec, hb = view.record, view.heartbeat
    # The trainer mirrors its latest evaluation into the heartbeat; read the history's tail only without it.
    last_eval = hb.get("last_eval") if isinstance(hb.get("last_eval"), dict) else None
    if last_eval is None:
        tail = tail_jsonl(view.run.paths.fast("metrics_history"), 1)
        last_eval = tail[0] if tail else {}
    metrics = dict(last_eval)
    step = hb.get("step", metrics.get("step"))
    total = hb.get("total_steps") or rec.get("total_steps")
    if hb.get("train_loss") is not None:
        metrics.setdefault("train_loss", hb.get("train_loss"))
    failure = view.failure or rec.get("failure") or {}
    return {
        "run_id": view.run.run_id,
        "name": view.run.name,
        "state": str(view.state),
        "step": step,
        "total_steps": total,
        "progress": (step / total) if (isinstance(step, (int, float)) and total) else None,
        "run_dir": view.run.paths.dir,
        "backend": rec.get("backend"),
        "job_id": (rec.get("attempts") or [{}])[-1].get("job_id"),
        "attempts": len(rec.get("attempts") or []),
        "sweep_id": rec.get("sweep_id"),
        "metrics": metrics,
        "tokens_per_sec": hb.get("tokens_per_sec"),
        "eta_s": hb.get("eta_s") if view.state in (State.RUNNING, State.STALLED) else None,
        "heartbeat_age_s": heartbeat_age(hb) if hb else None,
        "checks": checks_summary(view.run),
        "reason": view.reason or rec.get("state_reason"),
        "failure": failure.get("class"),
        "stop_reason": rec.get("stop_reason"),
        "exit_code": rec.get("exit_code"),
        "damaged": None,
        "stale": view.stale,
    }


def summarize_damaged(d: Damaged) -> dict[str, Any]:
    """A damaged folder as a status row: state DAMAGED, the path and what is wrong with it."""
    return {"run_id": d.label, "name": d.group, "state": "DAMAGED", "step": None, "total_steps": None,
            "progress": None, "run_dir": str(d.path), "backend": None, "job_id": None, "attempts": None,
            "sweep_id": None, "metrics": {}, "tokens_per_sec": None, "eta_s": None, "heartbeat_age_s": None,
            "checks": None, "reason": None, "failure": None, "stop_reason": None, "exit_code": None,
            "damaged": d.problem}


def _row(s: dict[str, Any]) -> list[str]:
    pct = f"{100 * s['progress']:.0f}" if s["progress"] is not None else "-"
    step = f"{s['step']}/{s['total_steps'] or '?'}" if s["step"] is not None else "-"
    m = s["metrics"]
    note = f"{s['run_dir']}: {s['damaged']}" if s.get("damaged") else (s["failure"] or s["reason"] or
                                                                       s["stop_reason"] or "")
    beat = fmt_age(s["heartbeat_age_s"]) if s["state"] in ("RUNNING", "STALLED") else "-"
    return [s["run_id"], s["state"], step, pct, fmt_num(m.get("train_loss")), fmt_num(m.get("val_loss")),
            f"{s['tokens_per_sec']:,.0f}" if isinstance(s["tokens_per_sec"], (int, float)) else "-", fmt_age(s["eta_s"]), beat, s["checks"] or "-", str(note)]


def render_table(rows: list[list[str]]) -> str:
    if not rows:
        return "no runs"
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(COLUMNS))]
    term = shutil.get_terminal_size((160, 20)).columns
    lines = []
    for r in [list(COLUMNS), *rows]:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
        lines.append(line[: max(term, 100)] if sys.stdout.isatty() else line)
    return "\n".join(lines)


def collect(args: argparse.Namespace) -> tuple[list[dict[str, Any]], bool]:
    """(one summary per run, damaged folders included as DAMAGED rows; whether a run asked for by
    name or id is damaged). Without RUN arguments the tree is listed with the run index
    (`orchestrator.record.index`): a finished run whose run.json is unchanged since its summary was
    kept is not read again."""
    root = ResultsRoot(args.results)
    damaged: list[Damaged] = []
    scan: Optional[index.Scan] = None
    if args.runs:
        runs = root.resolve_many(args.runs, damaged)
    else:
        scan = index.scan(root, rows=ROWS_VERSION)
        runs, damaged = scan.runs, scan.damaged
    asked_damaged = bool(args.runs and damaged)
    now = time.time()
    # (run, its summary from the index, or None: made below from its folder)
    pairs = [(r, from_index(row, r, now) if scan is not None and (row := scan.row(r)) is not None else None)
             for r in runs]
    if args.name:
        pairs = [(r, s) for r, s in pairs if (s["name"] if s is not None else r.name) in args.name]
        damaged = [d for d in damaged if d.group in args.name]
    wanted = {s.upper() for s in args.state}
    unknown = wanted - {s.value for s in State} - {"DAMAGED"}
    if unknown:
        raise UserError(f"unknown state {', '.join(sorted(unknown))}",
                        hint="states: " + ", ".join([s.value for s in State] + ["DAMAGED"]))
    views = iter(refresh([r for r, s in pairs if s is None], poll=not args.no_poll))
    summaries = []
    for r, s in pairs:
        if s is None:
            view = next(views)
            s = summarize(view)
            if scan is not None and view.state.terminal:
                scan.keep_row(r, to_index(s, view))
        if not wanted or s["state"] in wanted:
            summaries.append(s)
    if scan is not None:
        scan.save()
    damaged = damaged if not wanted or "DAMAGED" in wanted else []
    return summaries + [summarize_damaged(d) for d in damaged], asked_damaged


# Summaries of finished runs are kept in the run index, tagged with the code that made them.
ROWS_VERSION = index.code_version(__file__, refresh_module.__file__, index.__file__)


def to_index(s: dict[str, Any], view: RunView) -> dict[str, Any]:
    """A finished run's summary as the index keeps it: what depends on the place or the clock
    (the run folder, the heartbeat's age) is filled in again by `from_index`."""
    return {**s, "run_dir": None, "heartbeat_age_s": view.heartbeat.get("time") if view.heartbeat else None}


def from_index(row: dict[str, Any], run: Run, now: float) -> dict[str, Any]:
    """A summary kept by `to_index` (a copy, changed in place), with its run folder and heartbeat age now."""
    row["run_dir"] = run.paths.dir
    beat = row["heartbeat_age_s"]
    row["heartbeat_age_s"] = heartbeat_age({"time": beat}, now) if beat is not None else None
    return row


def unavailable(summaries: list[dict[str, Any]]) -> Optional[BackendUnavailable]:
    """The error to exit with (code 3) when a backend did not answer; the rows were shown stale."""
    why = next((s["stale"] for s in summaries if s.get("stale")), None)
    if why is None:
        return None
    return BackendUnavailable(f"the scheduler did not answer: {why}",
                              hint="the states shown are the last known ones (marked stale); try again later")


def run(args: argparse.Namespace) -> int:
    while True:
        summaries, asked_damaged = collect(args)
        if args.json:
            # the C encoder (no indent) is 5x faster on 10,000 runs; indent only for a person reading
            print(json.dumps(summaries, indent=1 if sys.stdout.isatty() else None, default=str))
        else:
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\033[H\033[2J")
            print(render_table([_row(s) for s in summaries]))
            if args.watch:
                counts: dict[str, int] = {}
                for s in summaries:
                    counts[s["state"]] = counts.get(s["state"], 0) + 1
                print(f"\n{time.strftime('%H:%M:%S')}  " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if not args.watch:
            err = unavailable(summaries)
            if err is not None:
                print(err.render(), file=sys.stderr)
                return err.exit_code
            return 1 if asked_damaged else 0
        sys.stdout.flush()
        time.sleep(max(0.5, args.watch))


__all__ = ["add_arguments", "run", "os"]
