"""`orch logs RUN [-f] [--attempt N] [--stderr|--stdout|--training]`: a run's logs without `tail -f` by hand.

Without a stream flag it prints the attempt's stdout. A trainer's traceback goes to stderr, so
when the attempt's stdout is (nearly) empty and its stderr is not, or the run did not complete,
the last lines of stderr follow under a heading that names `--stderr` (the whole file).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from orchestrator.commands.argtypes import count
from orchestrator.errors import UserError
from orchestrator.record.states import State
from orchestrator.record.tree import ResultsRoot

STDERR_TAIL = 30  # lines of stderr shown after a failed or silent attempt's stdout
_SHORT_STDOUT = 3  # stdout lines below which a silent attempt's stderr is shown


# A results root that does not exist is a usage error, never "no runs" (cli.check_results_root).
READS_RESULTS = True

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as the log grows, until the run ends")
    p.add_argument("--attempt", type=count(1), help="which attempt (default: the latest)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stderr", action="store_true", help="the trainer's stderr (tracebacks)")
    which.add_argument("--training", action="store_true", help="logs/training.log (periodic progress lines)")
    which.add_argument("--scheduler", action="store_true", help="the batch system's own output")
    p.add_argument("-n", "--lines", type=count(0), default=0, help="only the last N lines")


def run(args: argparse.Namespace) -> int:
    run_ = ResultsRoot(args.results).resolve(args.run)
    attempts = run_.record.get("attempts") or []
    n = args.attempt or (attempts[-1]["n"] if attempts else 1)
    if args.attempt and not any(a.get("n") == n for a in attempts):
        raise UserError(f"run {run_.run_id} has no attempt {n}", hint=f"it has {len(attempts)} attempt(s)")
    p = run_.paths
    path = (p.stderr(n) if args.stderr else p.training_log if args.training
            else p.scheduler_log if args.scheduler else p.stdout(n))
    stdout = not (args.stderr or args.training or args.scheduler)
    if not path.exists() and not args.follow and not (stdout and p.stderr(n).exists()):
        raise UserError(f"{path} does not exist yet", hint="the job may not have started; try -f to wait for it")
    pos = 0
    if path.exists() and args.lines:
        lines = path.read_bytes().splitlines(keepends=True)[-args.lines:]
        sys.stdout.buffer.write(b"".join(lines))
        pos = path.stat().st_size
    while True:
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos += len(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        if not args.follow:
            break
        if run_.reload() and run_.state.terminal:
            time.sleep(0.3)
            if path.exists() and path.stat().st_size == pos:
                break
        time.sleep(0.5)
    if stdout:
        _stderr_tail(p.stderr(n), run_.state, path, f"orch logs {args.run}" + (f" --attempt {n}" if args.attempt else ""))
    return 0


def _stderr_tail(stderr: Path, state: State, stdout: Path, command: str) -> None:
    """After stdout: the tail of stderr when the attempt failed or said (almost) nothing on stdout."""
    try:
        err = stderr.read_bytes()
    except OSError:
        return
    if not err.strip():
        return
    out_lines = len(stdout.read_bytes().splitlines()) if stdout.exists() else 0
    if not (state.terminal and state != State.COMPLETED) and out_lines >= _SHORT_STDOUT:
        return
    tail = err.splitlines(keepends=True)[-STDERR_TAIL:]
    total = len(err.splitlines())
    shown = f"last {len(tail)} of {total} lines" if total > len(tail) else f"{total} lines"
    sys.stdout.write(f"\n--- stderr ({shown}; all of it: {command} --stderr) ---\n")
    sys.stdout.flush()
    sys.stdout.buffer.write(b"".join(tail) + (b"" if tail[-1].endswith(b"\n") else b"\n"))
    sys.stdout.flush()
