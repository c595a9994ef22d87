"""The per-node shim of a multi-node SLURM job: `python -m orchestrator.backends.slurm.node
--signal USR1 -- LAUNCHER...`, started by srun as the task on every node.

Why: the warning signal (`--signal=B:USR1@grace`) reaches the job wrapper on the first node, which
passes it to srun, which passes it to every task. The task is the node's launcher (`accelerate
launch`, i.e. torchrun), which has no handler for USR1 and dies of its default action (exit 138),
taking the node's trainers with it before they can checkpoint; and torchrun starts its workers in
sessions of their own, so a signal to the launcher's group never reaches them. This shim starts the
launcher with the warning signal ignored (an ignored signal stays ignored across exec and is
inherited by the workers until the trainer installs its own handler) and forwards the warning
signal and SIGTERM/SIGINT/SIGHUP to the launcher's group and to every process below it. Each
forward is logged on stderr (srun gathers it into the job's log), one line per node naming the
trainer processes reached and whether each had its handler installed.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Optional

from orchestrator.job.proctree import catches, command_line, descendants, signal_tree

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _die_with_parent() -> None:
    """SIGKILL the launcher when this shim dies (its node's task was killed)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _trainers(pid: int) -> list[int]:
    """The trainer processes below the launcher (`python -m trainers ...`)."""
    return [p for p in descendants(pid) if " -m trainers" in f" {command_line(p)}"]


def run(command: list[str], warn: int) -> int:
    node = os.environ.get("SLURM_NODEID", "?")
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()

    def setup() -> None:
        os.setpgid(0, 0)
        _die_with_parent()
        if warn not in FORWARDED:  # a warning by SIGTERM is also how the launcher is stopped
            signal.signal(warn, signal.SIG_IGN)

    child: Optional[subprocess.Popen[bytes]] = None

    def forward(signum: int, _frame: Any) -> None:
        if child is None or child.poll() is not None:
            return
        trainers = [(p, catches(p, signum)) for p in _trainers(child.pid)]  # before they react and exit
        signal_tree(child.pid, signum)
        reached = ", ".join(f"{p} ({'handler' if caught else 'no handler yet'})" for p, caught in trainers) or "none yet"
        print(f"orch node {node} ({host}): {signal.Signals(signum).name} forwarded to launcher {child.pid}; "
              f"trainers: {reached}", file=sys.stderr, flush=True)

    for sig in {warn, *FORWARDED}:
        signal.signal(sig, forward)
    child = subprocess.Popen(command, preexec_fn=setup)
    rc = child.wait()
    return rc if rc >= 0 else 128 - rc


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m orchestrator.backends.slurm.node --signal USR1 -- COMMAND...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m orchestrator.backends.slurm.node")
    parser.add_argument("--signal", default="USR1", help="the warning signal (resources.signal)")
    args = parser.parse_args(argv[:cut])
    command = argv[cut + 1:]
    if not command:
        parser.error("no command after --")
    name = args.signal.upper()
    warn = int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))
    return run(command, warn)


if __name__ == "__main__":
    sys.exit(main())
