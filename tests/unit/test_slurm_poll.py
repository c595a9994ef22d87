"""SlurmBackend.poll against a scripted scheduler: a controller that does not answer, jobs that
age out of squeue, slurmdbd down. The cache file and its lock are the real ones (tests/slurm
runs the same paths against the real cluster)."""
from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pytest

from orchestrator.backends.base import StaleAnswer
from orchestrator.backends.slurm.cli import SlurmCommandError
from orchestrator.backends.slurm.submit import SlurmBackend
from orchestrator.errors import BackendUnavailable
from orchestrator.record.states import State
from orchestrator.spec.profile import ClusterProfile

CONFIG = "MaxArraySize            = 1001\nAccountingStorageType   = accounting_storage/{storage}\n"


class Scheduler:
    """Answers like squeue/sacct/scontrol would; `down` makes every call fail after `delay` s."""

    def __init__(self, accounting: bool = False) -> None:
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.down = False
        self.delay = 0.0
        self.squeue = ""
        self.shown: dict[str, str] = {}
        self.sacct_fails = False
        self.storage = "slurmdbd" if accounting else "none"

    def run(self, argv: Sequence[str], *, input: Any = None, timeout: float = 60,
            ok_errors: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        key = " ".join(argv[:3]) if argv[0] == "scontrol" else argv[0]
        with self.lock:
            self.calls[key] += 1
        if self.down:
            time.sleep(self.delay)
            raise BackendUnavailable(f"{argv[0]}: Unable to contact slurm controller (connect failure)")
        if argv[0] == "scontrol" and argv[1:3] == ["show", "config"]:
            return subprocess.CompletedProcess(argv, 0, CONFIG.format(storage=self.storage), "")
        if argv[0] == "squeue":
            return subprocess.CompletedProcess(argv, 0, self.squeue, "")
        if argv[0] == "scontrol":
            return subprocess.CompletedProcess(argv, 0, self.shown.get(argv[-1], ""), "")
        if argv[0] == "sacct":
            if self.sacct_fails:
                raise SlurmCommandError("sacct failed (exit 1): Problem talking to the database: Connection refused")
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(argv)


def backend(tmp_path: Path, sched: Scheduler, interval: float) -> SlurmBackend:
    return SlurmBackend(ClusterProfile(cache_dir=str(tmp_path / "cache"), query_interval=interval), cli=sched)  # type: ignore[arg-type]


def test_a_failed_query_is_cached_and_concurrent_callers_answer_at_once(tmp_path: Path) -> None:
    sched = Scheduler()
    sched.squeue = "5|RUNNING|None|n1\n"
    assert backend(tmp_path, sched, 0).poll(["5"])["5"].state == State.RUNNING
    sched.down, sched.delay = True, 0.5
    errors: list[BaseException] = []
    took: list[float] = []

    def ask() -> None:
        t0 = time.monotonic()
        try:
            backend(tmp_path, sched, 0).poll(["5"])
        except BaseException as exc:  # noqa: BLE001 - collected for the asserts below
            errors.append(exc)
        took.append(time.monotonic() - t0)

    threads = [threading.Thread(target=ask) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sched.calls["squeue"] == 2  # the answer before, and ONE failing query for five callers
    assert len(errors) == 5 and all(isinstance(e, StaleAnswer) for e in errors)
    assert all(e.exit_code == 3 and "Unable to contact" in e.message for e in errors)  # type: ignore[attr-defined]
    assert all(e.last_known["5"].state == State.RUNNING for e in errors)  # type: ignore[attr-defined]
    assert max(took) < 0.5 * 2 + 0.5, took  # one wait, not five in a row
    # within query_interval of the failure a caller answers at once; after it, it asks again
    with pytest.raises(StaleAnswer):
        backend(tmp_path, sched, 60).poll(["5"])
    assert sched.calls["squeue"] == 2
    with pytest.raises(StaleAnswer):
        backend(tmp_path, sched, 0).poll(["5"])
    assert sched.calls["squeue"] == 3
    sched.down = False
    assert backend(tmp_path, sched, 0).poll(["5"])["5"].state == State.RUNNING  # and recovers


def test_config_failure_counts_as_the_scheduler_down(tmp_path: Path) -> None:
    sched = Scheduler()
    sched.down = True
    with pytest.raises(StaleAnswer) as err:
        backend(tmp_path, sched, 60).poll(["5"])
    assert err.value.last_known == {}
    with pytest.raises(StaleAnswer):
        backend(tmp_path, sched, 60).poll(["5"])
    assert sum(sched.calls.values()) == 1


def test_an_ended_job_keeps_its_answer_after_slurm_forgets_it(tmp_path: Path) -> None:
    """No accounting: the exit code comes from `scontrol show job` (asked once), and the answer
    outlives the job's record in slurmctld (MinJobAge)."""
    sched = Scheduler()
    sched.squeue = "7|FAILED|JobLaunchFailure|n1\n"
    sched.shown["7"] = "JobId=7 JobState=FAILED Reason=JobLaunchFailure Restarts=0 ExitCode=0:9 NodeList=n1"
    got = backend(tmp_path, sched, 0).poll(["7"])["7"]
    assert (got.state, got.exit_code, got.signal) == (State.FAILED, 0, 9)
    backend(tmp_path, sched, 0).poll(["7"])
    assert sched.calls["scontrol -o show"] == 1  # not asked again while squeue still lists it
    sched.squeue = ""  # aged out
    got = backend(tmp_path, sched, 0).poll(["7"])["7"]
    assert (got.state, got.signal) == (State.FAILED, 9)
    assert backend(tmp_path, sched, 0).poll(["8"])["8"].state is None  # a job never seen stays unknown


def test_slurmdbd_down_is_not_asked_again_at_once(tmp_path: Path) -> None:
    sched = Scheduler(accounting=True)
    sched.sacct_fails = True
    sched.squeue = "9|CANCELLED|None|n1\n"
    sched.shown["9"] = "JobId=9 JobState=CANCELLED Reason=None Restarts=0 ExitCode=0:15"
    assert backend(tmp_path, sched, 0).poll(["9"])["9"].state == State.CANCELLED
    backend(tmp_path, sched, 0).poll(["9"])
    assert sched.calls["sacct"] == 1 and sched.calls["squeue"] == 2
