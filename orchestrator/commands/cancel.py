"""`orch cancel RUN...`: SIGTERM (the trainer checkpoints), then SIGKILL after a grace period.

Whatever is training is stopped, even when a job claims the run while `cancel` is looking at it:
the request file is written first (a job that has not started yet sees it and never trains, and a
claim after the cancel is refused by the record), and a job id that appears in the record meanwhile
is cancelled too.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

from orchestrator.backends import get_backend
from orchestrator.backends.registry import DEFAULT as DEFAULT_BACKEND
from orchestrator.commands.common import warn_damaged
from orchestrator.lifecycle.refresh import persist, refresh
from orchestrator.record import record
from orchestrator.record.record import IllegalTransition, attempt_n, current_job_id
from orchestrator.record.tree import Damaged, ResultsRoot, Run


# A results root that does not exist is a usage error, never "no runs" (cli.check_results_root).
READS_RESULTS = True

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, prefixes or names")


def run(args: argparse.Namespace) -> int:
    damaged: list[Damaged] = []
    runs = ResultsRoot(args.results).resolve_many(args.runs, damaged)
    rc = 1 if warn_damaged(damaged) else 0
    by_backend: dict[str, list[tuple[Run, str, int]]] = defaultdict(list)
    for view in refresh(runs, strict=True):  # the scheduler must answer (exit 3 when it cannot)
        run_ = view.run
        persist(view)  # a job the backend lost is recorded as what it is, not cancelled
        if view.state.terminal:
            print(f"{run_.run_id}: already {view.state}")
            continue
        # The request tells the job wrapper that the SIGTERM it is about to get is a cancellation.
        run_.paths.cancel_request.write_text("cancelled by orch cancel\n")
        rec = run_.reload()
        job_id = current_job_id(rec)
        if job_id:
            by_backend[rec.get("backend") or DEFAULT_BACKEND].append((run_, job_id, attempt_n(rec)))
            continue
        _cancel_record(run_, None)
        # A job that claimed the run between our read and the cancel is named in the record now.
        job_id = current_job_id(run_.reload())
        if job_id:
            by_backend[run_.record.get("backend") or DEFAULT_BACKEND].append((run_, job_id, attempt_n(run_.record)))
        else:
            print(f"{run_.run_id}: cancelled (no job was running)")
    for backend, items in by_backend.items():
        get_backend(backend).cancel([j for _, j, _ in items])
        for run_, job_id, n in items:
            _cancel_record(run_, n)  # the wrapper records CANCELLED itself; if it could not, here
            print(f"{run_.run_id}: cancelled ({backend} job {job_id})")
    return rc


def _cancel_record(run_: Run, n: int | None) -> None:
    try:
        record.cancel(run_, n=n)
    except IllegalTransition:
        pass  # the job wrapper (or a scheduler) recorded the end first
