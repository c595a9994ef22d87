"""`orch resume RUN...`: a new attempt of a stopped run; the trainer continues from its newest checkpoint.

Racing another `orch resume` or `orch monitor` is safe: the new attempt is opened by the record's
`resubmit` transition, which only the first caller wins. A run that someone else resumed first (or
that is running) is reported as not resumed (exit 1) and the other runs are still resumed.
"""
from __future__ import annotations

import argparse
import sys

from orchestrator.backends.registry import names as backend_names
from orchestrator.commands.common import warn_damaged
from orchestrator.errors import OrchError, UserError
from orchestrator.lifecycle.refresh import persist, refresh
from orchestrator.lifecycle.submit import resubmit
from orchestrator.record.record import IllegalTransition, attempt_n, current_attempt
from orchestrator.record.states import State
from orchestrator.record.tree import Damaged, ResultsRoot


# A results root that does not exist is a usage error, never "no runs" (cli.check_results_root).
READS_RESULTS = True

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--backend", choices=backend_names(), help="resume on another backend")


def run(args: argparse.Namespace) -> int:
    damaged: list[Damaged] = []
    runs = ResultsRoot(args.results).resolve_many(args.runs, damaged)
    rc = 1 if warn_damaged(damaged) else 0
    views = refresh(runs, strict=True)  # the scheduler must answer (exit 3 when it cannot)
    for v in views:
        if v.state == State.COMPLETED:  # asking for more of a finished run is a usage error
            raise UserError(f"run {v.run.run_id} already COMPLETED",
                            hint="to train further, submit again with a larger budget (e.g. --set train.max_steps=...)")
    for v in views:
        persist(v)
        rec = v.run.reload()
        n, state = attempt_n(rec), v.run.state
        if state.active:  # resumed by someone else since (a monitor, another `orch resume`), or never stopped
            att = current_attempt(rec) or {}
            why = (f"someone else resumed it first ({att.get('reason')}, at {att.get('submitted_at')})"
                   if att.get("reason") not in (None, "submit", "requeue") else
                   f"only stopped runs can be resumed (`orch cancel {v.run.run_id}` first, or wait for it to end)")
            print(f"{v.run.run_id}: not resumed: it is {state} (attempt {n}); {why}", file=sys.stderr)
            rc = 1
            continue
        try:
            job_id = resubmit(v.run, reason=f"orch resume (was {state})", backend=args.backend, after_attempt=n)
        except IllegalTransition as exc:  # a monitor or another `orch resume` resubmitted it first
            print(f"{v.run.run_id}: not resumed: {exc.message}", file=sys.stderr)
            rc = 1
            continue
        except OrchError as exc:  # its spec.yaml is damaged, the backend refused the job
            print(f"{v.run.run_id}: not resumed: {exc.render().removeprefix('error: ')}", file=sys.stderr)
            rc = 1
            continue
        except OSError as exc:  # spec.yaml missing or unreadable, a full disk
            where = f": {exc.filename}" if exc.filename else ""
            print(f"{v.run.run_id}: not resumed: {exc.strerror or exc}{where}", file=sys.stderr)
            rc = 1
            continue
        print(f"{v.run.run_id}: resumed as attempt {attempt_n(v.run.reload())} (job {job_id})")
    return rc
