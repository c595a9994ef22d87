"""`orch`: one table of subcommands, one place that maps errors to exit codes.

Each subcommand lives in `orchestrator/commands/<name>.py` with `add_arguments(parser)` and
`run(args) -> int`, imported only when chosen, so `orch status` never pays for torch,
pandas or matplotlib.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from orchestrator.errors import EXIT_USAGE, OrchError, exit_code_for
from orchestrator.record.paths import default_results_root

# name -> (module under orchestrator.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "submit": ("submit", "submit a spec (or a sweep) to the local or SLURM backend"),
    "prefetch": ("prefetch", "fetch the hub assets specs name into the shared cache; tokenize their corpora"),
    "plan": ("plan", "parameters, tokens, FLOPs, memory and (with --probe) wall time of a spec, before the queue"),
    "status": ("status", "show every run: state, progress, losses, throughput, ETA, heartbeat"),
    "logs": ("logs", "print or follow a run's logs"),
    "cancel": ("cancel", "cancel runs (SIGTERM, then SIGKILL after a grace period)"),
    "resume": ("resume", "start a new attempt of a stopped run from its newest checkpoint"),
    "generate": ("generate", "generate text from a run's checkpoint"),
    "check": ("check", "judge runs against their spec's checks; writes checks.json"),
    "monitor": ("monitor", "diagnose failures, retry per policy, alert (for cron)"),
    "preserve": ("preserve", "copy a run into a verified preserved-data bundle"),
    "verify": ("verify", "verify a bundle against its manifest"),
    "compare": ("compare", "compare runs or bundles side by side"),
    "plot": ("plot", "plot a run's training and validation curves"),
    "report": ("report", "write a static HTML site of the runs: index, run pages, sweeps"),
    "export": ("export", "export runs to TensorBoard event files or an MLflow tracking server"),
    "schema": ("schema", "print the spec's JSON Schema"),
    "completion": ("completion", "print a bash or zsh completion script (eval \"$(orch completion bash)\")"),
}


# commands that never write into the results tree: the cluster profile is not even read
READ_ONLY = frozenset({"status", "logs", "schema", "completion", "verify", "compare"})


class ArgParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so usage errors share the exit-code table."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=f"see `{self.prog} --help`")


class UsageError(OrchError):
    exit_code = EXIT_USAGE


def build_parser(argv: list[str] | None = None) -> ArgParser:
    """The parser; with `argv`, only the chosen command's module is imported."""
    parser = ArgParser(prog="orch", description="Run, watch, check and preserve ML experiments on local machines and SLURM.")
    parser.add_argument("--results", metavar="DIR", default=None,
                        help="results root (env ORCH_RESULTS, default ./results)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgParser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if argv is not None and name not in argv:
            continue  # not chosen: keep start-up cheap
        _load(module).add_arguments(p)
    return parser


def check_results_root(root: Path, must_exist: bool) -> None:
    """A results root that is a file (`--results /etc/passwd`, `/dev/null`) is a usage error for
    every command; one that does not exist is one for the commands that read runs
    (`READS_RESULTS = True` in their module), so a typo never reads as "no runs"."""
    hint = "pass --results DIR (or set ORCH_RESULTS) to the folder that holds your runs"
    try:
        exists, is_dir = root.exists(), root.is_dir()
    except OSError as exc:
        raise UsageError(f"cannot use {root} as the results root: {exc.strerror or exc}", hint=hint) from None
    if exists and not is_dir:
        raise UsageError(f"the results root {root} is not a directory", hint=hint)
    if not exists and must_exist:
        raise UsageError(f"the results root {root} does not exist", hint=hint)


def _load(module: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"orchestrator.commands.{module}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if args.version:
            from orchestrator import __version__

            print(f"orch {__version__}")
            return 0
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        args.results = Path(args.results) if args.results else default_results_root()
        if args.command not in READ_ONLY:
            from orchestrator.spec.profile import apply_umask

            apply_umask()  # the cluster profile's `umask`: shared project folders
        mod = _load(args._module)
        check_results_root(args.results, must_exist=getattr(mod, "READS_RESULTS", False))
        if not hasattr(mod, "add_arguments"):
            raise UsageError(f"unknown command {args.command}")
        return int(mod.run(args) or 0)
    except OrchError as exc:
        print(exc.render(), file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return exit_code_for(exc)
    except BrokenPipeError:  # `orch status | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except SystemExit as exc:  # argparse --help
        return int(exc.code or 0) if isinstance(exc.code, int) else 0


def entry() -> None:
    sys.exit(main())
