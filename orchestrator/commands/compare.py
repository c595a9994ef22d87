"""`orch compare RUN_OR_BUNDLE...`: spec differences and metrics side by side, plus plots."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from orchestrator.record.atomicio import atomic_write_bytes
from orchestrator.errors import RecordDamaged, UserError
from orchestrator.analysis.rundata import open_source
from orchestrator.commands.common import warn_damaged


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("refs", nargs="+", metavar="RUN_OR_BUNDLE",
                   help="run ids, prefixes, names (all runs of it), run folders or bundle folders")
    p.add_argument("--metrics", metavar="A,B", help="metrics to show and plot: evaluation metrics or train "
                   "diagnostics such as loss, grad_norm, tokens_per_sec (default: val_loss, val_ppl and any val_ppl@Nx)")
    p.add_argument("--at", default="best", metavar="WHEN", help="best (default), last or step=N (the newest "
                   "record at or before N; a note says which step was shown)")
    p.add_argument("--plot", metavar="FILE.png", help="write evolution plots (metric vs step, and perplexity "
                   "vs position multiple for length-generalization runs)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of a table")


def _expand(refs: list[str], results: Path) -> tuple[list, int]:
    """(the runs and bundles to compare, how many of the runs asked for are damaged). Damaged run
    folders are named on stderr and left out; the rest is compared."""
    from orchestrator.record.tree import Damaged, ResultsRoot

    out = []
    damaged: list[Damaged] = []
    bad = 0
    for ref in refs:
        group = results / ref
        if "/" not in ref and not Path(ref).exists() and group.is_dir() and not (group / "run.json").exists():
            for r in ResultsRoot(results).resolve_many([ref], damaged):
                out.append(open_source(str(r.paths.root), results))
            continue
        try:
            out.append(open_source(ref, results))
        except RecordDamaged as exc:
            print(f"warning: {exc.message}", file=sys.stderr)
            bad += 1
    return out, bad + warn_damaged(damaged)


def run(args: argparse.Namespace) -> int:
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UserError(f"--plot {args.plot}: the file name must end in .png")
    items, damaged = _expand(args.refs, args.results)
    if not items:
        raise RecordDamaged("nothing left to compare: every run asked for is damaged")
    from orchestrator.analysis.compare import compare, unique_labels

    unique_labels(items)
    cmp = compare(items, args.metrics, args.at)
    if args.json:
        print(json.dumps(cmp.to_json(), indent=2, default=str))
    elif args.csv:
        sys.stdout.write(cmp.to_frame().to_csv())
        for note in cmp.notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        print(cmp.render(shutil.get_terminal_size((120, 24)).columns))
    if args.plot:
        from orchestrator.analysis.plotting import compare_png

        png = compare_png(items, [m for m in cmp.metrics if "@" not in m], args.at)
        out = Path(args.plot)
        atomic_write_bytes(out, png)
        print(f"wrote {out}", file=sys.stderr if (args.json or args.csv) else sys.stdout)
    return 1 if damaged else 0
