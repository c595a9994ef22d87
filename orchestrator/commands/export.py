"""`orch export RUN... | --all  --to tensorboard DIR | --to mlflow URI`: runs into TensorBoard or MLflow.

Exporting again adds only what is new (see orchestrator.export.tensorboard / .mlflow). The
exporters are optional extras: `pip install 'orch[tensorboard]'` or `'orch[mlflow]'`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.errors import UserError

KINDS = ("tensorboard", "mlflow")


# A results root that does not exist is a usage error, never "no runs" (cli.check_results_root).
READS_RESULTS = True

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids, unique prefixes or run names")
    p.add_argument("--all", action="store_true", help="every run under the results root")
    p.add_argument("--to", nargs=2, required=True, metavar=("KIND", "DEST"),
                   help="tensorboard DIR (event files under DIR/<name>/<run_id>/) or mlflow URI "
                        "(sqlite:///mlflow.db, a folder, or http://host:5000)")
    p.add_argument("--experiment", metavar="NAME", help="mlflow: the experiment to use (default: the run's name)")
    p.add_argument("--no-poll", action="store_true", help="do not ask the backends; run folders only")


def check_tensorboard_dest(results: Path, dest: Path) -> None:
    """DEST/<name>/<run_id>/ must never be a run folder: refuse the results tree itself."""
    d, r = dest.resolve(), results.resolve()
    if d == r or (d.is_relative_to(r) and not d.relative_to(r).parts[0].startswith(".")):
        raise UserError(f"--to tensorboard {dest}: that is inside the results tree {results}",
                        hint="export to a folder of its own, e.g. --to tensorboard tb")


def run(args: argparse.Namespace) -> int:
    kind, dest = args.to
    if kind not in KINDS:
        raise UserError(f"--to {kind}: unknown destination", hint="use --to tensorboard DIR or --to mlflow URI")
    if bool(args.runs) == bool(args.all):
        raise UserError("name the runs to export, or pass --all (not both)")
    if args.experiment and kind != "mlflow":
        raise UserError("--experiment applies to --to mlflow only")
    from orchestrator.export.source import Source
    from orchestrator.lifecycle.refresh import refresh
    from orchestrator.record.tree import ResultsRoot

    root = ResultsRoot(args.results)
    runs = root.resolve_many(args.runs) if args.runs else list(root.iter_runs())
    if not runs:
        raise UserError(f"no runs under {args.results}", hint="pass --results DIR (or set ORCH_RESULTS)")
    sources = [Source(v) for v in refresh(runs, poll=not args.no_poll)]
    if kind == "tensorboard":
        from orchestrator.export.tensorboard import export_run as to_tb

        check_tensorboard_dest(Path(args.results), Path(dest))

        for src in sources:
            r = to_tb(src, Path(dest))
            what = "rewritten" if r.rewritten else "up to date" if not r.added else "appended"
            print(f"{src.run_id}: {r.added} points ({what}) -> {r.folder}")
        print(f"view with: tensorboard --logdir {dest}", file=sys.stderr)
    else:
        from orchestrator.export.mlflow import export_run as to_mlflow

        for src in sources:
            m = to_mlflow(src, dest, args.experiment)
            print(f"{src.run_id}: mlflow run {m.mlflow_run_id}{' (new)' if m.created else ''}: {m.params} params, "
                  f"{m.metrics} metric points, artifacts: {', '.join(m.artifacts) or 'unchanged'}")
    return 0
