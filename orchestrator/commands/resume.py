"""`orch resume RUN...`: a new attempt of a stopped run; the trainer continues from its newest checkpoint."""
from __future__ import annotations

import argparse
import sys

from orchestrator.backends.registry import names as backend_names
from orchestrator.lifecycle.refresh import persist, refresh
from orchestrator.lifecycle.submit import ensure_stopped, resubmit
from orchestrator.record.record import IllegalTransition, attempt_n
from orchestrator.record.tree import ResultsRoot


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--backend", choices=backend_names(), help="resume on another backend")


def run(args: argparse.Namespace) -> int:
    runs = ResultsRoot(args.results).resolve_many(args.runs)
    views = refresh(runs, strict=True)  # the scheduler must answer (exit 3 when it cannot)
    for v in views:
        ensure_stopped(v.run, v.state)
    rc = 0
    for v in views:
        persist(v)
        n = attempt_n(v.run.reload())
        try:
            job_id = resubmit(v.run, reason=f"orch resume (was {v.state})", backend=args.backend, after_attempt=n)
        except IllegalTransition as exc:  # a monitor or another `orch resume` resubmitted it first
            print(f"{v.run.run_id}: not resumed: {exc.message}", file=sys.stderr)
            rc = 1
            continue
        print(f"{v.run.run_id}: resumed as attempt {attempt_n(v.run.reload())} (job {job_id})")
    return rc
