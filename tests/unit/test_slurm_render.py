"""Rendered sbatch scripts against golden files, quoting of spec values, the cluster profile.

Regenerate the golden files after an intended change with ORCH_UPDATE_GOLDEN=1.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.backends.slurm.render import render_array, render_job
from orchestrator.spec.profile import ClusterProfile, load_profile
from orchestrator.errors import SpecError, SpecErrors, UserError
from orchestrator.spec.schema import Spec

GOLDEN = Path(__file__).parent / "golden"
PROFILE = ClusterProfile(python="/opt/venv/bin/python", partition="gpu", account="lab",
                         setup=["module load cuda/12.4"], sbatch=["--gres-flags=enforce-binding"])


def make_spec(**resources: Any) -> Spec:
    return Spec.model_validate({
        "name": "demo", "trainer": "lm", "backend": "slurm", "env": {"WANDB_MODE": "offline"},
        "resources": {"cpus_per_task": 4, "mem": "16G", "time": "02:00:00", **resources},
    })


def render(spec: Spec, profile: ClusterProfile = PROFILE, **kw: Any) -> str:
    return render_job(spec, profile, run_id="demo-20260101-000000-abcd",
                      run_dir=Path("/results/demo/demo-20260101-000000-abcd"),
                      results_root=Path("/results"), workdir=Path("/home/me/project"), **kw)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("ORCH_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with ORCH_UPDATE_GOLDEN=1 if intended"


def test_single_node_golden() -> None:
    check_golden("slurm_single_node.sh", render(make_spec(qos="high"), dependency="afterok:12:13"))


def test_multi_node_golden() -> None:
    check_golden("slurm_multi_node.sh", render(make_spec(nodes=2, gpus_per_node=4, signal="TERM", signal_grace=120)))


def test_array_dispatcher_golden() -> None:
    dirs = [Path(f"/results/demo/demo-{i}") for i in range(3)]
    check_golden("slurm_array.sh", render_array(make_spec(), PROFILE, run_dirs=dirs, array="0-2%2",
                                                output="/results/demo/.arrays/sweep-0-%a.log",
                                                label="sweep demo-sweep-0"))


def test_multi_node_rank_expands_per_task_not_in_the_batch_shell() -> None:
    script = render(make_spec(nodes=2))
    launch = next(line for line in script.splitlines() if line.startswith("exec "))
    assert "bash -c 'exec " in launch and '--machine_rank "$SLURM_NODEID"' in launch
    # the per-node command is single-quoted: the batch shell passes $SLURM_NODEID through untouched
    inner = launch.split("bash -c ", 1)[1]
    assert inner.startswith("'") and inner.endswith("'")


def test_spec_values_never_run(tmp_path: Path) -> None:
    """Execute the rendered script (python replaced by echo): nothing in a value runs."""
    pwned = tmp_path / "pwned"
    evil = f"$(touch {pwned})`touch {pwned}`;touch {pwned}"
    spec = Spec.model_validate({"name": "demo", "trainer": "lm", "env": {"EVIL": evil},
                                "resources": {"partition": evil, "account": evil}})
    profile = ClusterProfile(python="/bin/echo")
    script = render_job(spec, profile, run_id="r", run_dir=tmp_path / f"run {evil}", results_root=tmp_path,
                        workdir=tmp_path)
    out = subprocess.run(["bash", "-c", script + '\nprintf "%s" "$EVIL"'], capture_output=True, text=True, timeout=30)
    assert not pwned.exists(), script
    assert out.returncode == 0, out.stderr
    assert f"run {evil}" in out.stdout  # the run folder arrives as one literal argument


def test_newlines_cannot_escape_sbatch_lines() -> None:
    with pytest.raises(UserError, match="single line"):
        render(make_spec(partition="gpu\ntouch /tmp/pwned"))
    with pytest.raises(UserError, match="single line"):
        render(make_spec(sbatch=["--comment=x\ntouch /tmp/pwned"]))


def test_user_template_and_unknown_placeholder(tmp_path: Path) -> None:
    mine = tmp_path / "mine.sh.tmpl"
    mine.write_text("#!/bin/bash\n{{ sbatch_options }}\necho {{ run_id }} on {{nodes}}\nexec {{ jobwrap }}\n")
    out = render(make_spec(template=str(mine)))
    assert "echo demo-20260101-000000-abcd on 1" in out and "#SBATCH --partition=gpu" in out
    mine.write_text("{{ no_such_thing }}\n")
    with pytest.raises(UserError, match="no_such_thing"):
        render(make_spec(template=str(mine)))


def test_spec_overrides_profile() -> None:
    out = render(make_spec(partition="debug"))
    assert "#SBATCH --partition=debug" in out and "#SBATCH --account=lab" in out


def test_profile_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("partition: gpu\nsetup: ['module load x']\nquery_interval: 2\nsignal: sigusr2\n")
    monkeypatch.setenv("ORCH_CLUSTER", str(path))
    prof = load_profile()
    assert prof.partition == "gpu" and prof.query_interval == 2 and prof.signal == "USR2"
    path.write_text("partiton: gpu\n")
    with pytest.raises(SpecErrors) as err:
        load_profile()
    assert "partiton" in err.value.render() and "known keys" in err.value.render()
    monkeypatch.setenv("ORCH_CLUSTER", str(tmp_path / "missing.yaml"))
    with pytest.raises(SpecError):
        load_profile()
    monkeypatch.delenv("ORCH_CLUSTER")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty"))
    assert load_profile() == ClusterProfile()


def test_profile_umask_starts_the_job_script(tmp_path: Path) -> None:
    """A cluster profile's `umask` is the job's too, whatever the umask sbatch was called with."""
    shared = render(make_spec(), ClusterProfile(umask="0002"))
    assert "\numask 0002\n" in shared and shared.index("umask 0002") < shared.index("-m orchestrator.job")
    assert "umask" not in render(make_spec(), ClusterProfile())
