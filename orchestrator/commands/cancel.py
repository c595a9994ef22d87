"""`orch cancel RUN...`: SIGTERM (the trainer checkpoints), then SIGKILL after a grace period."""
from __future__ import annotations

import argparse
from collections import defaultdict

from orchestrator.record.attempts import current_job_id
from orchestrator.backends import get_backend
from orchestrator.record.tree import ResultsRoot, Run
from orchestrator.record.states import State
from orchestrator.lifecycle.refresh import refresh


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, prefixes or names")


def run(args: argparse.Namespace) -> int:
    runs = ResultsRoot(args.results).resolve_many(args.runs)
    by_backend: dict[str, list[tuple[Run, str]]] = defaultdict(list)
    for view in refresh(runs):
        run_ = view.run
        if view.state.terminal:
            print(f"{run_.run_id}: already {view.state}")
            continue
        run_.paths.cancel_request.write_text("cancelled by orch cancel\n")
        job_id = current_job_id(run_.record)
        if job_id:
            by_backend[run_.record.get("backend") or "local"].append((run_, job_id))
        else:
            run_.set_state(State.CANCELLED)
    for backend, items in by_backend.items():
        get_backend(backend).cancel([j for _, j in items])
        for run_, job_id in items:
            # The wrapper records CANCELLED itself; if it could not (killed, or still queued), do it here.
            def mutate(rec: dict) -> None:
                if not State(rec.get("state", "PENDING")).terminal:
                    rec["state"] = str(State.CANCELLED)
            run_.update(mutate)
            print(f"{run_.run_id}: cancelled ({backend} job {job_id})")
    return 0
