"""Fixtures for tests that need the real local Slurm cluster (tests/slurm/cluster.sh up).

Without Slurm they skip with the reason; with ORCH_REQUIRE_SLURM=1 (CI) they fail instead,
because in CI a SLURM test that skips is a test that silently stopped testing.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Orch, wait_until  # noqa: F401  (re-exported to the SLURM tests)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STUB = HERE / "stub"  # a `trainers` stand-in (see stub/trainers/__main__.py)
CLUSTER_SH = HERE / "cluster.sh"


@functools.lru_cache(maxsize=1)
def slurm_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if not shutil.which("sinfo"):
        return "Slurm is not installed (no sinfo on PATH); bring up the test cluster with `tests/slurm/cluster.sh up`"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out; is slurmctld running? (`tests/slurm/cluster.sh status`)"
    if "is UP" not in ping.stdout:
        return f"no Slurm controller answers ({ping.stdout.strip() or ping.stderr.strip()}); run `tests/slurm/cluster.sh up`"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(autouse=True)
def _needs_slurm() -> None:
    problem = slurm_problem()
    if problem:
        if os.environ.get("ORCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"ORCH_REQUIRE_SLURM=1 but {problem}", pytrace=False)
        pytest.skip(problem)


def make_orch(tmp_path: Path, cwd: Path, profile: str = "query_interval: 0.5\n") -> Orch:
    """The real CLI against a temp results root, a private query cache and cluster profile."""
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    (tmp_path / "cluster.yaml").write_text(profile)
    o = Orch(results, cwd)
    o.env.update(ORCH_CLUSTER=str(tmp_path / "cluster.yaml"), ORCH_SLURM_CACHE_DIR=str(tmp_path / "cache"))
    # From tests/slurm/stub, `orchestrator` must still be this checkout's (not an installed copy); sbatch
    # passes the environment on, so the jobs' wrappers import it too. The stub's `trainers` comes first
    # (the working directory precedes PYTHONPATH).
    o.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return o


@pytest.fixture
def stub_orch(tmp_path: Path) -> Orch:
    """orch run from tests/slurm/stub: jobs run the stub trainer (fast scheduler tests)."""
    return make_orch(tmp_path, STUB)


@pytest.fixture
def lm_orch(tmp_path: Path) -> Orch:
    """orch run from the repository: jobs run the real `lm` trainer."""
    return make_orch(tmp_path, REPO)


def squeue_field(job_id: str, fmt: str) -> str:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", job_id.split("_")[0], "-o", f"%i|{fmt}"],
                         capture_output=True, text=True).stdout
    found = dict(line.partition("|")[::2] for line in out.splitlines())
    # tasks cancelled while pending have no line of their own: the array's record speaks for them
    return found.get(job_id, found.get(job_id.split("_")[0], ""))


def scontrol_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout


def cluster(*args: str) -> None:
    subprocess.run(["bash", str(CLUSTER_SH), *args], check=True, capture_output=True, text=True, timeout=300)
