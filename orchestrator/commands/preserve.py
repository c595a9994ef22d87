"""`orch preserve RUN...`: copy runs into verified BagIt bundles (see orchestrator/preserve/bundle.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.errors import EXIT_USAGE, UserError
from orchestrator.preserve.bundle import ARCHIVES, preserve
from orchestrator.analysis.rundata import RunData
from orchestrator.commands.common import warn_damaged
from orchestrator.record.checkpoints import POLICIES
from orchestrator.record.tree import Damaged, ResultsRoot


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, prefixes, names (all runs of it) or folders")
    p.add_argument("--dest", metavar="DIR", help="where bundles go (default: the spec's preserve.dest, "
                   "else preserved_data)")
    p.add_argument("--checkpoints", choices=POLICIES, default=None,
                   help="which checkpoint folders to keep (default: the spec's preserve.checkpoints, else best)")
    p.add_argument("--archive", choices=ARCHIVES, default=None, help="write one archive instead of a folder")
    p.add_argument("--force", action="store_true", help="replace an existing, different bundle of the run")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--copy", action="store_true",
                     help="copy checkpoints byte by byte (default: a reflink where the filesystem can, else a copy)")
    how.add_argument("--link", action="store_true",
                     help="hard-link checkpoints where a reflink is impossible: fast and no extra space, but the "
                          "bundle then shares the run's files (an in-place change to one changes the bundle)")


def _spec_preserve(d: RunData) -> dict:
    section = d.spec.get("preserve")
    return section if isinstance(section, dict) else {}


def run(args: argparse.Namespace) -> int:
    damaged: list[Damaged] = []
    runs = ResultsRoot(args.results).resolve_many(args.runs, damaged)
    seen: set[Path] = set()
    failed = 0
    damaged_rc = 1 if warn_damaged(damaged) else 0
    for r in runs:
        if r.paths.root.resolve() in seen:
            continue
        seen.add(r.paths.root.resolve())
        d = RunData(r.paths.root, "run")
        conf = _spec_preserve(d)
        dest = Path(args.dest or conf.get("dest") or "preserved_data")
        policy = args.checkpoints or conf.get("checkpoints") or "best"
        if policy not in POLICIES:
            raise UserError(f"{r.run_id}: spec preserve.checkpoints {policy!r} is not one of {', '.join(POLICIES)}")
        try:
            out = preserve(d, dest, checkpoints=policy, archive=args.archive, force=args.force, copy=args.copy,
                           link=args.link, log=lambda s: print(s))
        except UserError as exc:
            if len(runs) == 1:
                raise
            print(f"{r.run_id}: {exc.render()}", file=sys.stderr)  # go on with the other runs
            failed += 1
            continue
        for note in out.notes:
            print(f"  note: {note}")
        size = out.bytes / 2**20
        if out.status == "unchanged":
            print(f"{r.run_id}: unchanged {out.path} ({out.files} files, {size:.1f} MiB; same manifest)")
        elif out.status == "updated":
            print(f"{r.run_id}: updated {out.path}: already preserved; only {', '.join(out.changed)} changed "
                  f"(check results, run record annotations, or what preserve generates from them), so the bag was "
                  f"rebuilt with a new manifest ({out.files} files, {size:.1f} MiB, {out.seconds:.1f}s)")
        else:
            linked = f", {out.linked} {'linked' if args.link else 'reflinked'}" if out.linked else ""
            print(f"{r.run_id}: {out.status} {out.path} ({out.files} files, {size:.1f} MiB{linked}, "
                  f"{out.seconds:.1f}s)")
    return EXIT_USAGE if failed else damaged_rc
