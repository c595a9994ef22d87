"""The SLURM backend against the real local cluster: arrays, throttles, pipelines, cancel, errors.

Jobs run the stub trainer (tests/slurm/stub) so these tests measure the scheduler path, not
torch start-up; tests/slurm/test_slurm_training.py runs the real `lm` trainer.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import Orch, cluster, make_orch, scontrol_job, squeue_field, wait_until, STUB

pytestmark = pytest.mark.slurm

BASE = """\
name: {name}
trainer: stub_trainer:TRAINER
backend: slurm
resources: {{cpus_per_task: 1, mem: 500M, time: "00:05:00"}}
retry: {{max_attempts: 1}}
config: {{seconds: {seconds}, exit_code: {exit_code}}}
"""


def spec(tmp: Path, name: str, seconds: float = 1, exit_code: int = 0, extra: str = "") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(BASE.format(name=name, seconds=seconds, exit_code=exit_code) + extra)
    return path


def status(orch: Orch) -> dict[str, dict]:
    return {r["run_id"]: r for r in orch.json("status")}


def run_json(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def test_single_job_completes_and_status_says_so(stub_orch: Orch, tmp_path: Path) -> None:
    rows = stub_orch.json("submit", str(spec(tmp_path, "one")), "--wait")
    assert len(rows) == 1 and rows[0]["job_id"].isdigit()
    row = status(stub_orch)[rows[0]["run_id"]]
    assert row["state"] == "COMPLETED"
    rec = run_json(rows[0]["run_dir"])
    assert rec["attempts"][0]["job_id"] == rows[0]["job_id"]
    assert rec["attempts"][0]["started_at"]
    # the job script really is what --dry-run renders, and sbatch ran it from job.sh
    assert "#SBATCH --requeue" in (Path(rows[0]["run_dir"]) / "job.sh").read_text()


def test_sweep_is_one_throttled_array(stub_orch: Orch, tmp_path: Path) -> None:
    path = spec(tmp_path, "sweep6", seconds=3,
                extra="sweep: {grid: {config.seconds: [3, 3.1, 3.2, 3.3, 3.4, 3.5]}, max_parallel: 2}\n")
    rows = stub_orch.json("submit", str(path))
    ids = [r["job_id"] for r in rows]
    bases = {j.split("_")[0] for j in ids}
    assert len(rows) == 6 and len(bases) == 1, ids  # one sbatch, one array
    assert sorted(int(j.split("_")[1]) for j in ids) == list(range(6))
    base = bases.pop()
    assert "ArrayTaskThrottle=2" in scontrol_job(base)
    most_running = 0

    def all_done() -> bool:
        nonlocal most_running
        out = subprocess.run(["squeue", "-h", "-r", "-j", base, "-t", "RUNNING", "-o", "%i"],
                             capture_output=True, text=True).stdout.split()
        most_running = max(most_running, len(out))
        return all(r["state"] == "COMPLETED" for r in status(stub_orch).values())

    wait_until(all_done, 240, "6 array tasks to complete", every=0.5)
    assert 1 <= most_running <= 2
    assert len(list((Path(rows[0]["run_dir"]).parent / ".arrays").glob("*.sh"))) == 1


def test_sweep_split_by_max_array_size(tmp_path: Path) -> None:
    orch = make_orch(tmp_path, STUB, "query_interval: 0.5\nmax_array_size: 4\n")
    path = spec(tmp_path, "split", seconds=1,
                extra="sweep: {grid: {config.seconds: [1, 1.1, 1.2, 1.3, 1.4, 1.5]}, max_parallel: 3}\n")
    rows = orch.json("submit", str(path), "--wait")
    ids = [r["job_id"] for r in rows]
    first, second = ids[0].split("_")[0], ids[4].split("_")[0]
    assert [j.split("_")[1] for j in ids] == ["0", "1", "2", "3", "0", "1"]
    assert first != second and {j.split("_")[0] for j in ids} == {first, second}
    # the throttle holds across the two arrays: the second was submitted behind the first
    scripts = sorted((Path(rows[0]["run_dir"]).parent / ".arrays").glob("*.sh"))
    assert len(scripts) == 2 and f"--dependency=afterany:{first}" in scripts[1].read_text()
    recs = [run_json(r["run_dir"]) for r in rows]
    assert min(r["attempts"][0]["started_at"] for r in recs[4:]) >= max(r["ended_at"] for r in recs[:4])
    assert all(r["state"] == "COMPLETED" for r in status(orch).values())


def test_partial_submission_is_recorded_before_the_error(tmp_path: Path) -> None:
    """Array 1 (4 runs) is accepted, array 2 asks for a partition that does not exist."""
    orch = make_orch(tmp_path, STUB, "query_interval: 0.5\nmax_array_size: 4\n")
    path = spec(tmp_path, "partial", seconds=1, extra=(
        "sweep: {list: [{resources.partition: debug}, {resources.partition: debug}, "
        "{resources.partition: debug}, {resources.partition: debug}, {resources.partition: nosuch}, "
        "{resources.partition: nosuch}]}\n"))
    res = orch("submit", str(path), check=2)
    assert "submitted 4 of 6 runs" in res.stderr and "nosuch" not in res.stdout
    recs = sorted((json.loads(p.read_text()) for p in (tmp_path / "results" / "partial").glob("*/run.json")),
                  key=lambda r: r["sweep_index"])
    assert [bool(r["attempts"][0].get("job_id")) for r in recs] == [True] * 4 + [False] * 2
    assert [r["state"] for r in recs[4:]] == ["FAILED", "FAILED"]
    assert all(r["failure"]["class"] == "submit_error" for r in recs[4:])
    wait_until(lambda: all(r["state"] == "COMPLETED" for r in status(orch).values()
                           if r["run_id"] in {x["run_id"] for x in recs[:4]}), 120, "the accepted runs")


def test_pipeline_second_stage_runs_after_first(stub_orch: Orch, tmp_path: Path) -> None:
    a = spec(tmp_path, "stage1", seconds=3)
    b = spec(tmp_path, "stage2", seconds=1, extra="after: [stage1]\n")
    rows = stub_orch.json("submit", str(a), str(b), "--wait")
    first, second = (run_json(r["run_dir"]) for r in rows)
    assert f"afterok:{rows[0]['job_id']}" in scontrol_job(rows[1]["job_id"]) or first["state"] == "COMPLETED"
    assert first["state"] == second["state"] == "COMPLETED"
    assert second["attempts"][0]["started_at"] >= first["ended_at"]


def test_pipeline_second_stage_never_runs_when_first_fails(stub_orch: Orch, tmp_path: Path) -> None:
    a = spec(tmp_path, "bad1", seconds=1, exit_code=3)
    b = spec(tmp_path, "never2", seconds=1, extra="after: [bad1]\n")
    res = stub_orch("submit", str(a), str(b), "--wait", "--json", check=1)
    rows = json.loads(res.stdout)
    states = status(stub_orch)
    assert states[rows[0]["run_id"]]["state"] == "FAILED"
    assert states[rows[1]["run_id"]]["state"] == "CANCELLED"
    assert not run_json(rows[1]["run_dir"])["attempts"][0].get("started_at")  # it never ran
    assert "DependencyNeverSatisfied" in scontrol_job(rows[1]["job_id"])


def test_cancel_queued_and_running(stub_orch: Orch, tmp_path: Path) -> None:
    path = spec(tmp_path, "long", seconds=300,
                extra="sweep: {grid: {config.seconds: [300, 301, 302]}, max_parallel: 1}\n")
    rows = stub_orch.json("submit", str(path))
    wait_until(lambda: squeue_field(rows[0]["job_id"], "%T") == "RUNNING", 60, "the first task to run")
    assert squeue_field(rows[1]["job_id"], "%T") == "PENDING"
    by_id = status(stub_orch)
    assert by_id[rows[1]["run_id"]]["state"] == "QUEUED"
    stub_orch("cancel", *(r["run_id"] for r in rows))
    wait_until(lambda: all(squeue_field(r["job_id"], "%T") == "CANCELLED" for r in rows), 60, "scancel")
    assert {r["state"] for r in status(stub_orch).values()} == {"CANCELLED"}


def test_spec_values_are_inert_in_the_job(stub_orch: Orch, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    probe = f"$(touch {pwned}); `touch {pwned}`"
    extra = f"env: {{ORCH_PROBE: {json.dumps(probe)}}}\n"
    rows = stub_orch.json("submit", str(spec(tmp_path, "inert", extra=extra)), "--wait")
    out = (Path(rows[0]["run_dir"]) / "logs" / "stdout-1.log").read_text()
    started = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert started["env_probe"] == probe  # the job saw the literal text
    assert not pwned.exists()


def test_unreachable_scheduler_exits_3(stub_orch: Orch, tmp_path: Path) -> None:
    conf = Path("/etc/slurm/slurm.conf").read_text().replace("SlurmctldPort=6817", "SlurmctldPort=6999")
    (tmp_path / "slurm.conf").write_text(conf)
    stub_orch.env["SLURM_CONF"] = str(tmp_path / "slurm.conf")
    res = stub_orch("submit", str(spec(tmp_path, "nowhere")), check=3, timeout=300)
    assert "Unable to contact slurm controller" in res.stderr or "cannot be reached" in res.stderr


def test_status_from_markers_when_accounting_is_off(tmp_path: Path) -> None:
    """`up --no-accounting`: sacct is disabled; status must still say COMPLETED."""
    cluster("up", "--no-accounting")
    try:
        probe = subprocess.run(["sacct"], capture_output=True, text=True)
        assert "accounting storage is disabled" in (probe.stdout + probe.stderr)
        orch = make_orch(tmp_path, STUB)
        rows = orch.json("submit", str(spec(tmp_path, "noacct")), "--wait")
        assert status(orch)[rows[0]["run_id"]]["state"] == "COMPLETED"
        # A job the scheduler has forgotten (aged out of squeue, no sacct): the backend says
        # "unknown" and status falls back to the run folder's own record.
        from orchestrator.backends.slurm.submit import SlurmBackend
        from orchestrator.backends.slurm.cli import SlurmCLI
        from orchestrator.spec.profile import ClusterProfile

        backend = SlurmBackend(ClusterProfile(cache_dir=str(tmp_path / "cache2"), query_interval=0))
        before = dict(SlurmCLI.calls)
        got = backend.poll(["999999", rows[0]["job_id"]])
        assert got["999999"].state is None
        assert str(got[rows[0]["job_id"]].state) == "COMPLETED"
        assert SlurmCLI.calls.get("sacct", 0) == before.get("sacct", 0)  # never asked a disabled sacct
    finally:
        cluster("up")
