"""Parsers for squeue/sacct/scontrol output recorded from the real test cluster (Slurm 22.05.8).

The files under golden/slurm/ are verbatim output of the commands the backend runs, taken
from tests/slurm/cluster.sh's cluster with jobs in every state the backend has to read.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.backends.slurm.submit import dependency_option, parse_sbatch
from orchestrator.backends.slurm.cli import SlurmCommandError
from orchestrator.backends.slurm.parse import (
    ClusterConfig, expand_array_id, map_state, merge_statuses, parse_exit_code, parse_sacct, parse_squeue,
)
from orchestrator.record.states import State

GOLDEN = Path(__file__).parent / "golden" / "slurm"


def read(name: str) -> str:
    return (GOLDEN / name).read_text()


@pytest.mark.parametrize("raw, state", [
    ("PENDING", State.QUEUED), ("REQUEUED", State.QUEUED), ("CONFIGURING", State.QUEUED),
    ("RUNNING", State.RUNNING), ("COMPLETING", State.RUNNING), ("COMPLETED", State.COMPLETED),
    ("FAILED", State.FAILED), ("NODE_FAIL", State.FAILED), ("OUT_OF_MEMORY", State.FAILED),
    ("BOOT_FAIL", State.FAILED), ("TIMEOUT", State.TIMEOUT), ("DEADLINE", State.TIMEOUT),
    ("PREEMPTED", State.PREEMPTED), ("CANCELLED", State.CANCELLED), ("CANCELLED by 0", State.CANCELLED),
    ("SUSPENDED", State.QUEUED), ("", None), ("SOMETHING_NEW", None),
])
def test_state_map(raw: str, state: State | None) -> None:
    assert map_state(raw) == state


def test_expand_array_ids() -> None:
    assert expand_array_id("54_[1-4%1]") == ["54_1", "54_2", "54_3", "54_4"]
    assert expand_array_id("54_[2,4%1]") == ["54_2", "54_4"]
    assert expand_array_id("7_[0-6:3]") == ["7_0", "7_3", "7_6"]
    assert expand_array_id("57") == ["57"] and expand_array_id("54_0") == ["54_0"]


def test_exit_codes() -> None:
    assert parse_exit_code("3:0") == (3, 0) and parse_exit_code("0:15") == (0, 15)
    assert parse_exit_code("") == (None, None)


def test_squeue_mixed_states_and_pending_reasons() -> None:
    got = parse_squeue(read("squeue_mixed.txt"))
    assert got["54_1"].state == State.QUEUED and got["54_1"].reason == "JobArrayTaskLimit"
    assert got["55"].reason == "Dependency"
    assert got["54_0"].state == State.RUNNING and got["54_0"].node == "n2" and got["54_0"].reason is None
    assert got["56"].state == State.FAILED and got["56"].reason is None  # ended: no pending reason
    assert "54_3" not in got  # cancelled while pending: no record of its own


def test_squeue_ended_jobs_keep_raw_state() -> None:
    got = parse_squeue(read("squeue_ended.txt"))
    assert got["5"].state == State.CANCELLED and got["5"].raw_state == "CANCELLED"
    assert got["41"].state == State.CANCELLED  # the array record of tasks cancelled while pending
    assert got["54_0"].state == State.COMPLETED


def test_sacct_exit_codes_and_collapsed_pending_tasks() -> None:
    got = parse_sacct(read("sacct_mixed.txt"))
    assert got["56"].state == State.FAILED and got["56"].exit_code == 3
    assert got["54_0"].state == State.RUNNING
    assert {f"54_{i}" for i in range(1, 5)} <= set(got)  # '54_[1-4%1]' expanded
    ended = parse_sacct(read("sacct_ended.txt"))
    assert ended["41_0"].exit_code == 75  # a task's own line beats its array's range line
    assert ended["41_0"].state == State.CANCELLED and ended["41_2"].state == State.CANCELLED
    assert ended["54_2"].state == State.RUNNING  # not the range line's PENDING


def test_merge_prefers_squeue_while_alive_and_sacct_when_ended() -> None:
    live = parse_squeue(read("squeue_ended.txt"))
    acct = parse_sacct(read("sacct_ended.txt"))
    got = merge_statuses(live, acct, ["55", "56", "41_1", "999"])
    assert got["55"].state == State.QUEUED and got["55"].reason == "Dependency"
    assert got["56"].state == State.FAILED and got["56"].exit_code == 3
    assert got["41_1"].state == State.CANCELLED  # only the array's record speaks for it
    assert got["999"].state is None  # unknown to both: the run folder decides


def test_merge_without_accounting_uses_the_array_record() -> None:
    got = merge_statuses(parse_squeue(read("squeue_ended.txt")), {}, ["41_2", "54_4"])
    assert got["41_2"].state == State.CANCELLED
    assert got["54_4"].state == State.QUEUED and got["54_4"].reason == "JobArrayTaskLimit"


def test_show_config() -> None:
    cfg = ClusterConfig.from_show_config(read("show_config.txt"))
    assert cfg.max_array_size == 1001 and cfg.accounting and cfg.cluster_name == "orchtest"
    assert cfg.min_job_age == 3600 and cfg.version.startswith("22.05")
    off = ClusterConfig.from_show_config(read("show_config.txt").replace(
        "accounting_storage/slurmdbd", "accounting_storage/none"))
    assert not off.accounting


def test_sbatch_parsable_and_dependencies() -> None:
    assert parse_sbatch("123\n") == "123" and parse_sbatch("124;orchtest\n") == "124"
    with pytest.raises(SlurmCommandError):
        parse_sbatch("sbatch: error: something\n")
    assert dependency_option([]) is None
    assert dependency_option(["12"]) == "afterok:12"
    assert dependency_option(["12_0", "12_1", "15", "20_3"]) == "afterok:12:15:20_3"


SHOW_JOB = ("JobId=4 JobName=stubby UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901756 Nice=0 "
            "Account=root QOS=normal JobState=FAILED Reason=JobLaunchFailure Dependency=(null) Requeue=1 "
            "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:9 RunTime=00:00:05 TimeLimit=00:05:00 NodeList=n1 "
            "BatchHost=n1 Command=/tmp/a dir/job.sh WorkDir=/tmp StdOut=/tmp/a dir/logs/scheduler.log Power=")


def test_show_job_fields_and_status() -> None:
    """`scontrol -o show job` (recorded on the test cluster): a SIGKILLed batch step, 0:9."""
    from orchestrator.backends.slurm.parse import parse_show_job, show_job_status

    fields = parse_show_job(SHOW_JOB)
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0" and fields["ExitCode"] == "0:9"
    st = show_job_status("4", SHOW_JOB)
    assert st is not None and st.state == State.FAILED and st.exit_code == 0 and st.signal == 9
    assert st.reason is None and st.node == "n1"  # a reason only means something while waiting
    pending = show_job_status("2", "JobId=2 JobState=PENDING Reason=BeginTime Restarts=1 ExitCode=0:0")
    assert pending is not None and pending.state == State.QUEUED and pending.reason == "BeginTime"
    assert show_job_status("9", "") is None


@pytest.mark.parametrize("line, cause", [
    ("slurmstepd-n1: error: *** JOB 2 ON n1 CANCELLED AT 2026-12-03T11:33:35 DUE TO NODE FAILURE, "
     "SEE SLURMCTLD LOG FOR DETAILS ***", "node_fail"),
    ("slurmstepd-n1: error: *** JOB 2 ON n1 CANCELLED AT 2026-12-03T11:35:17 ***", "cancelled"),
    ("slurmstepd-n1: error: *** JOB 2 ON n1 CANCELLED AT 2026-12-03T11:35:17 DUE TO TIME LIMIT ***", "timeout"),
    ("slurmstepd-n2: error: *** STEP 2.0 ON n2 CANCELLED AT 2026-12-03T11:35:17 DUE TO PREEMPTION ***", "preempted"),
    ("slurmstepd-n1: error: *** JOB 3 ON n1 CANCELLED AT 2026-12-03T11:35:17 ***", None),  # another job
    ("orch: attempt 2 started (job 2, restart 1) on n1", None),
])
def test_stepd_cause(line: str, cause: str | None) -> None:
    from orchestrator.backends.slurm.parse import stepd_cause

    assert stepd_cause(["some output", line], {"2"}) == cause


def test_stepd_cause_takes_the_last_line() -> None:
    from orchestrator.backends.slurm.parse import stepd_cause

    lines = ["*** JOB 7_1 ON n1 CANCELLED AT 2026-12-03T11:33:35 DUE TO NODE FAILURE, SEE SLURMCTLD LOG ***",
             "*** JOB 7_1 ON n2 CANCELLED AT 2026-12-03T11:40:00 ***"]
    assert stepd_cause(lines, {"7_1", "8"}) == "cancelled"
