"""The per-node shim of multi-node SLURM jobs, with real processes and signals: a launcher that,
like torchrun, starts its worker in a session of its own and has no handler for the warning."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, wait_until

LAUNCHER = """
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], "-m", "trainers", "run"], start_new_session=True)
sys.exit(1 if worker.wait() else 0)  # torchrun turns a worker's exit 75 into 1
"""
WORKER = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
open(sys.argv[-1] + ".ready", "w").close()
deadline = time.time() + 20
while not got and time.time() < deadline:
    time.sleep(0.02)
sys.exit(75 if got else 3)
"""


def test_shim_keeps_the_launcher_alive_and_reaches_the_worker(tmp_path: Path) -> None:
    marker = tmp_path / "w"
    worker = WORKER.replace("sys.argv[-1]", repr(str(marker)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "SLURM_NODEID": "1", "SLURMD_NODENAME": "n2"}
    shim = subprocess.Popen([sys.executable, "-m", "orchestrator.backends.slurm.node", "--signal", "USR1", "--",
                             sys.executable, "-c", LAUNCHER, worker], env=env, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: Path(str(marker) + ".ready").exists(), 30, "the worker's handler")
    shim.send_signal(signal.SIGUSR1)  # what srun passes on to each node's task
    rc = shim.wait(timeout=30)
    err = shim.stderr.read() if shim.stderr else ""
    assert rc == 1, err  # the launcher's own exit (its worker exited 75), not 138: USR1 did not kill it
    line = next(ln for ln in err.splitlines() if ln.startswith("orch node 1 (n2): SIGUSR1"))
    assert "(handler)" in line, line


def test_shim_passes_the_launchers_death_by_signal_on() -> None:
    proc = subprocess.run([sys.executable, "-m", "orchestrator.backends.slurm.node", "--", "sh", "-c", "kill -9 $$"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 128 + 9
    usage = subprocess.run([sys.executable, "-m", "orchestrator.backends.slurm.node", "sh"],
                           env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_signal_tree_reaches_processes_in_other_sessions() -> None:
    from orchestrator.job.proctree import descendants, signal_tree

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess,sys,time;"
                               "p=subprocess.Popen(['sleep','30'],start_new_session=True);time.sleep(30)"],
                              preexec_fn=lambda: os.setpgid(0, 0))
    try:
        kids = wait_until(lambda: descendants(parent.pid), 10, "the grandchild")
        sent = signal_tree(parent.pid, signal.SIGTERM)
        assert sent == kids  # the sleep, in its own session
        parent.wait(timeout=10)
        wait_until(lambda: not os.path.exists(f"/proc/{kids[0]}") or
                   open(f"/proc/{kids[0]}/stat").read().split()[2] == "Z", 10, "the grandchild to end")
    finally:
        if parent.poll() is None:
            parent.kill()
