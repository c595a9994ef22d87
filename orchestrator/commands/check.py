"""`orch check RUN... [--json]`: judge runs against their spec's checks and the built-in health checks.

Why a command and not a notebook cell: the verdict lands in each run's `checks.json` (written
atomically), and the exit code (0 all error-severity checks pass, 1 otherwise) lets scripts and
`orch monitor` act on it. Each run's header line ends with the verdict summary (`7/7 pass`,
`1/2 pass FAILED`: judged checks only, see `checks.judge.summarize`), the same string
`orch status` shows in its CHECKS column and `--json` gives as `summary`.
Damaged run folders are named on stderr (exit 1 only when one was asked
for by name); a run that cannot be read or whose verdict cannot be written (a full disk, an I/O
error, a folder of another user) gets an error line, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestrator.checks.judge import ERROR, FAIL, PASS, UNKNOWN, CheckResult, RunVerdict, check_run, write_verdict
from orchestrator.commands.common import warn_damaged
from orchestrator.errors import OrchError, UserError
from orchestrator.record.tree import Damaged, ResultsRoot, Run

_MARK = {"pass": "PASS", "fail": "FAIL", "unknown": "UNKNOWN", "error": "ERROR", "note": "note", "skip": "-"}


# A results root that does not exist is a usage error, never "no runs" (cli.check_results_root).
READS_RESULTS = True

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run ids, unique prefixes, names or run folders")
    parser.add_argument("--all", action="store_true", help="check every run under the results root")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="show only checks that did not pass")


def run(args: argparse.Namespace) -> int:
    root = ResultsRoot(args.results)
    damaged: list[Damaged] = []
    if args.all:
        runs, damaged = root.scan()
    elif args.runs:
        runs = root.resolve_many(args.runs, damaged)
    else:
        raise UserError("name at least one run (or pass --all)", hint="`orch status` lists runs")
    warn_damaged(damaged)
    if not runs and not damaged:
        raise UserError(f"no runs under {args.results}")
    verdicts = [_check(r) for r in runs]
    if args.json:
        out: Any = [v.to_dict() for v in verdicts]
        print(json.dumps(out if len(out) != 1 else out[0], indent=2))
    else:
        print_table(verdicts, quiet=args.quiet)
    asked_damaged = bool(damaged) and not args.all
    return 0 if all(v.passed for v in verdicts) and not asked_damaged else 1


def _check(run: Run) -> RunVerdict:
    """The run's verdict, recorded in checks.json and run.json when the folder takes the write."""
    try:
        verdict = check_run(run)
    except (OSError, OrchError) as exc:  # unreadable files (EIO, permissions), a record damaged meanwhile
        why = exc.message if isinstance(exc, OrchError) else f"{exc.strerror or exc}: {exc.filename or ''}"
        return RunVerdict(run.run_id, str(run.state), [CheckResult("builtin:readable", "builtin", "error", ERROR,
                                                                   f"cannot read the run: {why}")])
    try:
        write_verdict(run, verdict)
    except (OSError, OrchError) as exc:  # a full disk, a folder we may read but not write
        why = exc.message if isinstance(exc, OrchError) else (exc.strerror or str(exc))
        print(f"warning: {run.run_id}: the verdict was not recorded ({why}: "
              f"{getattr(exc, 'filename', None) or run.paths.checks})", file=sys.stderr)
    return verdict


def print_table(verdicts: list[RunVerdict], quiet: bool = False, file: Any = None) -> None:
    file = file or sys.stdout
    for v in verdicts:
        print(f"{v.run_id}  [{v.state}]  {v.summary}", file=file)
        rows = [r for r in v.results if not quiet or r.status not in (PASS, "skip", "note")]
        if not rows:
            continue
        width = min(48, max(len(r.name) for r in rows))
        for r in rows:
            name = r.name if len(r.name) <= width else r.name[: width - 1] + "~"
            line = f"  {_MARK.get(r.status, r.status):7} {r.severity:5}  {name:<{width}}  {r.detail}"
            if r.status in (FAIL, UNKNOWN) and r.message:
                line += f"  -- {r.message}"
            print(line, file=file)
        for r in v.failing:
            print(f"  failing: {r.name}: {r.detail}", file=file)
