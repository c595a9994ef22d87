"""Running Slurm's commands: one place for timeouts, error mapping and call counting.

Every scheduler call goes through `SlurmCLI.run`, so (1) a scheduler that cannot be reached
becomes `BackendUnavailable` (exit code 3) instead of a traceback, (2) benchmarks and tests
can count calls (`SlurmCLI.calls`), and (3) a query cache shared by every orch process of
the user keeps `orch status --watch` in ten terminals from hammering slurmctld.
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from orchestrator.record.atomicio import atomic_write_json
from orchestrator.errors import BackendUnavailable, OrchError, UserError

# stderr fragments that mean "the scheduler is not there", as opposed to "it said no".
UNREACHABLE = (
    "Unable to contact slurm controller",
    "Unable to establish a connection",
    "Socket timed out",
    "Connection refused",
    "Zero Bytes were transmitted or received",
    "Communication connection failure",
    "Slurm backup controller in standby mode",
    "slurm_persist_conn_open_without_init",
    "Could not establish a configuration source",
)
# stderr fragments that mean the user's request was refused for a reason they can fix.
REJECTED = (
    "Invalid account",
    "Invalid partition",
    "Invalid qos",
    "invalid partition",
    "Requested node configuration is not available",
    "Requested time limit is invalid",
    "Invalid generic resource",
    "Invalid feature specification",
    "Job violates accounting/QOS policy",
    "More processors requested than permitted",
    "Memory required by task is not available",
    "Node count specification invalid",
    "Invalid job array specification",
)
DEFAULT_TIMEOUT = float(os.environ.get("ORCH_SLURM_TIMEOUT", "60"))


class SlurmCommandError(OrchError):
    """A Slurm command ran and failed (the scheduler answered, but with an error)."""


class SlurmCLI:
    """Runs sbatch/squeue/sacct/scontrol/scancel; counts calls per command (class-wide)."""

    calls: Counter[str] = Counter()

    def run(self, argv: Sequence[str], *, input: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
            ok_errors: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """Run a command; raise BackendUnavailable/UserError/SlurmCommandError on failure.

        A failure whose stderr contains one of `ok_errors` is returned instead of raised
        (e.g. squeue's "Invalid job id specified" for jobs it has forgotten).
        """
        SlurmCLI.calls[argv[0]] += 1
        try:
            proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            raise BackendUnavailable(
                f"{argv[0]} not found: Slurm's client commands are not installed here",
                hint="run orch on a login node of the cluster, or use --backend local",
            )
        except subprocess.TimeoutExpired:
            raise BackendUnavailable(f"{argv[0]} did not answer within {timeout:.0f} s", hint="is slurmctld overloaded or down?")
        if proc.returncode == 0:
            return proc
        err = (proc.stderr or proc.stdout or "").strip()
        if any(s in err for s in ok_errors):
            return proc
        if any(s in err for s in UNREACHABLE):
            raise BackendUnavailable(f"{argv[0]}: {err}", hint="the Slurm controller cannot be reached; try again later")
        if any(s in err for s in REJECTED):
            raise UserError(f"{argv[0]} refused the job: {err}",
                            hint="check resources/partition/account/qos in the spec or the cluster profile")
        raise SlurmCommandError(f"{argv[0]} failed (exit {proc.returncode}): {err}")


def default_cache_dir() -> Path:
    explicit = os.environ.get("ORCH_SLURM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "orch"


def cache_key() -> str:
    """One cache per user and cluster (SLURM_CONF names the cluster when several are used)."""
    try:
        user = getpass.getuser()
    except Exception:  # pragma: no cover - no passwd entry in some containers
        user = str(os.getuid())
    conf = os.environ.get("SLURM_CONF", "default")
    return f"slurm-{user}-{hashlib.sha1(conf.encode()).hexdigest()[:8]}"


class SharedCache:
    """A small JSON file under an flock: the scheduler's last answers and when they came.

    Holding the lock *while* querying means concurrent orch processes queue up behind one
    query and then all read its answer, instead of all querying at once.
    """

    def __init__(self, directory: Optional[Path] = None) -> None:
        self.dir = Path(directory) if directory else default_cache_dir()
        self.path = self.dir / f"{cache_key()}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """Yield the cache contents under an exclusive lock; write them back on exit."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:  # read-only home: work without sharing
            yield {}
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    data = {}
            except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
                data = {}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                atomic_write_json(self.path, data, fsync=False)
        finally:
            os.close(fd)  # releases the lock


def prune_jobs(jobs: dict[str, Any], now: float, keep: float) -> None:
    """Drop cached answers older than `keep` seconds so the file stays small."""
    for key in [k for k, v in jobs.items() if now - float(v.get("at", 0)) > keep]:
        del jobs[key]

