"""`orch resume RUN...`: a new attempt of a stopped run; the trainer continues from its newest checkpoint."""
from __future__ import annotations

import argparse

from orchestrator.record.tree import ResultsRoot
from orchestrator.lifecycle.refresh import persist, refresh
from orchestrator.lifecycle.submit import ensure_stopped, resubmit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--backend", choices=["local", "slurm"], help="resume on another backend")


def run(args: argparse.Namespace) -> int:
    runs = ResultsRoot(args.results).resolve_many(args.runs)
    views = refresh(runs)
    for v in views:
        ensure_stopped(v.run, v.state)
    for v in views:
        persist(v)
        job_id = resubmit(v.run, reason=f"orch resume (was {v.state})", backend=args.backend)
        print(f"{v.run.run_id}: resumed as attempt {len(v.run.reload().get('attempts', []))} (job {job_id})")
    return 0
