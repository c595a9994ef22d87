"""`orch report [RUN...] [--out DIR] [--no-poll]`: a static HTML site of the runs (see orchestrator.report)."""
from __future__ import annotations

import argparse
from pathlib import Path


# A results root that does not exist is a usage error, never "no runs" (cli.check_results_root).
READS_RESULTS = True

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids, unique prefixes or run names (default: all)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where the site goes (default: RESULTS/.report); replaced whole, atomically")
    p.add_argument("--no-poll", action="store_true", help="do not ask the backends; run folders only")


def default_out(results: Path) -> Path:
    return Path(results) / ".report"


def run(args: argparse.Namespace) -> int:
    from orchestrator.report.site import build

    out = Path(args.out) if args.out else default_out(args.results)
    res = build(args.results, out, args.runs or None, poll=not args.no_poll)
    runs = f"{res.runs} run" + ("" if res.runs == 1 else "s")
    print(f"wrote {runs} ({res.reused} pages unchanged) in {res.seconds:.1f} s: {res.index.resolve().as_uri()}")
    return 0
