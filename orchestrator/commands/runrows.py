"""One run as a status row: the summary `orch status --json` prints and the table's columns.

`summarize(view)` reads nothing beyond the view (run.json and heartbeat.json, already loaded) and,
only for a heartbeat without the trainer's copy of its last evaluation, the metrics history's
last line. TRAIN is the current training loss (the heartbeat's, refreshed every `log_every`
steps), VAL the last evaluation's. `table(summaries)` gives the columns and cells of the status
table: RUN is each run's shortest unique id suffix (`orch logs 3f2a` accepts it), the parameters
a sweep varies become columns of their own, and the NOTE says why a run is where it is (the
failure class first, the phase of a running one, a pending reason, a stop reason, a damaged
folder's problem).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from orchestrator.commands.common import fmt_age, fmt_num
from orchestrator.commands.table import Column, shortest_unique_suffixes
from orchestrator.lifecycle.refresh import RunView, checks_summary
from orchestrator.record.atomicio import tail_jsonl
from orchestrator.record.heartbeat import heartbeat_age
from orchestrator.record.states import State
from orchestrator.record.tree import Damaged

LIVE = ("RUNNING", "STALLED")


def tree_ids(root: Path | str) -> list[str]:
    """Every run folder's name in a results tree (directory names only: no file is opened)."""
    ids: list[str] = []
    try:
        groups = [e.path for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return ids
    for group in groups:
        try:
            ids.extend(e.name for e in os.scandir(group) if e.is_dir() and not e.name.startswith("."))
        except OSError:
            continue
    return ids


def short_ids(root: Path | str, ids: Iterable[str]) -> dict[str, str]:
    """run id -> its shortest suffix unique in the whole tree (so any command resolves it)."""
    return shortest_unique_suffixes(tree_ids(root) + list(ids))


def summarize(view: RunView) -> dict[str, Any]:
    """Everything status shows about one run, as plain JSON-able values."""
    rec, hb = view.record, view.heartbeat
    # The trainer mirrors its latest evaluation into the heartbeat; read the history's tail only without it.
    last_eval = hb.get("last_eval") if isinstance(hb.get("last_eval"), dict) else None
    if last_eval is None:
        tail = tail_jsonl(view.run.paths.fast("metrics_history"), 1)
        last_eval = tail[0] if tail else {}
    metrics = dict(last_eval)
    step = hb.get("step", metrics.get("step"))
    total = hb.get("total_steps") or rec.get("total_steps")
    if hb.get("train_loss") is not None:  # the current loss, newer than the last evaluation's
        metrics["train_loss"] = hb["train_loss"]
    failure = view.failure or rec.get("failure") or {}
    live = view.state in (State.RUNNING, State.STALLED)
    return {
        "run_id": view.run.run_id,
        "name": view.run.name,
        "state": str(view.state),
        "step": step,
        "total_steps": total,
        "progress": (step / total) if (isinstance(step, (int, float)) and total) else None,
        "backend": rec.get("backend"),
        "job_id": (rec.get("attempts") or [{}])[-1].get("job_id"),
        "attempts": len(rec.get("attempts") or []),
        "created_ns": rec.get("created_ns"),
        "sweep_id": rec.get("sweep_id"),
        "sweep_point": rec.get("sweep_point") or None,
        "metrics": metrics,
        "phase": hb.get("phase") if live else None,
        "tokens_per_sec": hb.get("tokens_per_sec"),
        "eta_s": hb.get("eta_s") if live else None,
        "checks": checks_summary(view.run),
        "reason": view.reason or rec.get("state_reason"),
        "failure": failure.get("class"),
        "failure_summary": failure.get("summary"),
        "stop_reason": rec.get("stop_reason"),
        "exit_code": rec.get("exit_code"),
        "damaged": None,
        "stale": view.stale,
        # last: what depends on the place and the clock (a row kept by the run index is completed with them)
        "run_dir": view.run.paths.dir,
        "heartbeat_age_s": heartbeat_age(hb) if hb else None,
    }


def summarize_damaged(d: Damaged) -> dict[str, Any]:
    """A damaged folder as a status row: state DAMAGED, the path and what is wrong with it."""
    return {"run_id": d.label, "name": d.group, "state": "DAMAGED", "step": None, "total_steps": None,
            "progress": None, "backend": None, "job_id": None, "attempts": None,
            "created_ns": None, "sweep_id": None, "sweep_point": None, "metrics": {}, "phase": None,
            "tokens_per_sec": None, "eta_s": None, "checks": None, "reason": None,
            "failure": None, "failure_summary": None, "stop_reason": None, "exit_code": None,
            "damaged": d.problem, "stale": None, "run_dir": str(d.path), "heartbeat_age_s": None}


def note(s: dict[str, Any]) -> str:
    """Why the run is where it is, the most telling word first (NOTE is cut from the right)."""
    if s.get("damaged"):
        return f"{s['run_dir']}: {s['damaged']}"
    if s.get("failure"):
        summary = s.get("failure_summary")
        return f"{s['failure']}: {summary}" if summary else str(s["failure"])
    if s.get("reason"):
        return str(s["reason"])
    if s["state"] in LIVE and s.get("phase") not in (None, "train"):
        return str(s["phase"])  # evaluating, checkpointing: why the step stands still
    return str(s.get("stop_reason") or "")


def fmt_pct(s: dict[str, Any]) -> str:
    return f"{100 * s['progress']:.0f}" if isinstance(s.get("progress"), (int, float)) else "-"


def fmt_step(s: dict[str, Any]) -> str:
    return f"{s['step']}/{s['total_steps'] or '?'}" if s.get("step") is not None else "-"


def fmt_rate(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return "-"
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:,.0f}"


def _param_header(key: str, keys: Sequence[str]) -> str:
    """A swept key's column header: its last part, unless another swept key ends the same way."""
    short = key.rsplit(".", 1)[-1]
    return short if sum(k.rsplit(".", 1)[-1] == short for k in keys) == 1 else key


def table(summaries: Sequence[dict[str, Any]], *, ids: dict[str, str] | None = None
          ) -> tuple[list[Column], list[list[str]]]:
    """(columns, cells) of the status table. `ids`: run id -> the short id to show (default: the
    shortest unique suffixes among these rows)."""
    ids = ids if ids is not None else shortest_unique_suffixes([s["run_id"] for s in summaries])
    params: list[str] = []
    for s in summaries:
        for k in (s.get("sweep_point") or {}):
            if k not in params:
                params.append(k)
    # priority: lower is dropped later (swept parameters name a sweep's runs better than NAME does)
    columns = [Column("RUN", required=True, min_width=4), Column("NAME", priority=3, flex=True, min_width=6, soft=16),
               Column("STATE", required=True)]
    columns += [Column(_param_header(k, params).upper(), priority=2, right=True) for k in params]
    columns += [Column("STEP", priority=6, right=True), Column("%", required=True, right=True),
                Column("TRAIN", required=True, right=True), Column("VAL", required=True, right=True),
                Column("TOK/S", priority=4, right=True), Column("ETA", required=True, right=True),
                Column("BEAT", priority=7, right=True), Column("CHECKS", priority=5, min_width=6),
                Column("NOTE", required=True, flex=True, min_width=8, soft=20)]
    rows = []
    for s in summaries:
        m = s.get("metrics") or {}
        point = s.get("sweep_point") or {}
        beat = fmt_age(s["heartbeat_age_s"]) if s["state"] in LIVE else "-"
        rows.append([ids.get(s["run_id"], s["run_id"]), str(s.get("name") or "-"), s["state"]]
                    + [fmt_num(point[k]) if k in point else "-" for k in params]
                    + [fmt_step(s), fmt_pct(s), fmt_num(m.get("train_loss")), fmt_num(m.get("val_loss")),
                       fmt_rate(s.get("tokens_per_sec")), fmt_age(s.get("eta_s")), beat, s.get("checks") or "-",
                       note(s)])
    return columns, rows
