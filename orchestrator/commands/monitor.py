"""`orch monitor --once | --loop [--interval 180] | --install-cron [--every 5m] [--yes]`.

Why: made for cron. `--once` does one idempotent pass and prints only what changed (cron mails
any output, so a quiet night stays quiet); an overlapping invocation exits 0 at once. `--loop`
repeats passes for a login-node tmux. `--install-cron` prints the crontab line (installs it with
`--yes`), pointing at this interpreter and this results root.
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from orchestrator.commands.argtypes import count, seconds
from orchestrator.errors import BackendUnavailable, UserError


# A results root that does not exist is a usage error, never "no runs" (cli.check_results_root).
READS_RESULTS = True

def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one pass, then exit (for cron; the default)")
    mode.add_argument("--loop", action="store_true", help="repeat passes every --interval seconds")
    mode.add_argument("--install-cron", action="store_true", help="print (or with --yes install) the crontab line")
    p.add_argument("--interval", type=seconds(0.1), default=180.0, metavar="S", help="seconds between --loop passes (default 180)")
    p.add_argument("--passes", type=count(1), default=None, metavar="N", help=argparse.SUPPRESS)  # tests: stop --loop after N
    p.add_argument("--every", default="5m", help="--install-cron: how often (e.g. 5m, 15m, 1h; default 5m)")
    p.add_argument("--yes", action="store_true", help="--install-cron: install into your crontab")
    p.add_argument("--json", action="store_true", help="print this pass's events as JSON lines")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing (events still go to events.jsonl)")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="rewrite this static HTML report (`orch report`) after every pass (default: the cluster "
                        "profile's report_dir)")


def run(args: argparse.Namespace) -> int:
    if args.install_cron:
        return install_cron(args)
    if args.loop:
        if args.interval <= 0:
            raise UserError("--interval must be positive")
        return loop(args)
    return one_pass(args)


def one_pass(args: argparse.Namespace) -> int:
    import json

    from orchestrator.monitor.alerts import print_summary
    from orchestrator.monitor.monitor import Monitor

    result = Monitor(args.results, log=lambda s: None if args.quiet else print(s, file=sys.stderr),
                     report=report_dir(args)).run_pass()
    if result.skipped:
        return 0  # another monitor is running: exit quietly
    if args.json:
        for ev in result.events:
            print(json.dumps(ev, default=str))
    elif not args.quiet:
        print_summary(result.events, result.active)
    if result.unavailable:  # the pass did what it could without the scheduler; say what it could not
        err = BackendUnavailable(f"the scheduler did not answer: {result.unavailable}",
                                 hint="runs it knows nothing new about were left as they were; try again later")
        print(err.render(), file=sys.stderr)
        return err.exit_code
    return 0


def report_dir(args: argparse.Namespace) -> Path | None:
    """`--report DIR`, else the cluster profile's `report_dir`, else none."""
    if getattr(args, "report", None):
        return Path(args.report)
    from orchestrator.spec.profile import load_profile

    configured = load_profile().report_dir
    return Path(configured) if configured else None


def loop(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(_sig: int, _frame: Any) -> None:
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    done = 0
    while not stop.is_set():
        one_pass(args)
        sys.stdout.flush()
        done += 1
        if args.passes is not None and done >= args.passes:
            break
        stop.wait(args.interval)
    return 0


def cron_schedule(every: str) -> str:
    """`5m` -> `*/5 * * * *`; `1h` -> `0 * * * *`; `2h` -> `0 */2 * * *`."""
    m = re.fullmatch(r"\s*(\d+)\s*(m|min|h)?\s*", every or "")
    if not m or int(m.group(1)) <= 0:
        raise UserError(f"--every {every!r}: use minutes or hours, e.g. 5m, 15m, 1h")
    n, unit = int(m.group(1)), m.group(2) or "m"
    minutes = n * 60 if unit == "h" else n
    if minutes < 60:
        if 60 % minutes:
            raise UserError(f"--every {every!r}: minutes must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)")
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if minutes % 60 or 24 % (minutes // 60):
        raise UserError(f"--every {every!r}: hours must divide 24 (1h, 2h, 3h, 4h, 6h, 8h, 12h, 24h)")
    hours = minutes // 60
    return "0 * * * *" if hours == 1 else f"0 */{hours} * * *" if hours < 24 else "0 0 * * *"


def cron_line(results: Path, every: str) -> str:
    root = results.resolve()
    q = shlex.quote
    cmd = (f"cd {q(str(Path.cwd()))} && {q(sys.executable)} -m orchestrator --results {q(str(root))} "
           f"monitor --once >> {q(str(root / 'monitor.log'))} 2>&1")
    return f"{cron_schedule(every)} {cmd}  # orch monitor {root}"


def install_cron(args: argparse.Namespace) -> int:
    line = cron_line(args.results, args.every)
    if not args.yes:
        print(line)
        print("# add it with `crontab -e`, or run again with --yes to install it", file=sys.stderr)
        return 0
    crontab = shutil.which("crontab")
    if not crontab:
        raise UserError("crontab is not installed on this machine", hint="print the line without --yes and add it by hand")
    cur = subprocess.run([crontab, "-l"], capture_output=True, text=True)
    existing = cur.stdout if cur.returncode == 0 else ""
    marker = line.split("  # ", 1)[1]
    kept = [ln for ln in existing.splitlines() if not ln.endswith(f"# {marker}")]
    new = "\n".join(kept + [line]) + "\n"
    res = subprocess.run([crontab, "-"], input=new, capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(f"crontab refused the new table: {res.stderr.strip()}")
    print(f"installed: {line}")
    return 0
