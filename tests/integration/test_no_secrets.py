"""Secrets end to end through the real CLI: refused at submit, absent from provenance.json of a
real run submitted with tokens in its environment and command line, and absent from every file
of a preserved bundle (folder and archive) of runs whose files hold them."""
from __future__ import annotations

import json
import random
import string
import tarfile
from pathlib import Path
from typing import Any

import yaml

from runfactory import make_run
from tests.conftest import wait_until

_R = random.Random(11)
GH = "ghp_" + "".join(_R.choice(string.ascii_letters + string.digits) for _ in range(36))
HF = "hf_" + "".join(_R.choice(string.ascii_letters + string.digits) for _ in range(34))
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcmNoLXRlc3QifQ.c2lnbmF0dXJlX29mX3RoZV90b2tlbg"
PASSWORD = "hunter2-Correct-Horse"
SECRETS = (GH, HF, JWT, PASSWORD, "plainsecret-4321", "abc123-secret-value", "hf_xxxxxxxx", "OPENSSH PRIVATE KEY")


def spec_file(tmp: Path, name: str, **over: Any) -> Path:
    """A quick run of the failure-injecting test trainer (it trains normally with fail: none)."""
    spec: dict[str, Any] = {
        "name": name, "trainer": "tests.fixtures.faulty:FaultyTrainer", "seed": 3,
        "train": {"max_steps": 12, "log_every": 2, "lr": 0.05, "min_lr": 0.0, "device": "cpu"},
        "eval": {"every": 6, "at_end": True}, "checkpoint": {"every": 6, "keep_last": 2, "hf_format": False},
        "resources": {"time": "00:05:00"}, "env": {"OMP_NUM_THREADS": "1"},
        "config": {"fail": "none", "step_sleep": 0.0},
        **over,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _no_secret_in(blob: bytes, where: Any) -> None:
    for s in SECRETS:
        assert s.encode() not in blob, (where, s)


def _check_bundle_and_archive(orch, run: str, tmp: Path) -> Path:
    dest = tmp / "preserved"
    orch("preserve", run, "--dest", str(dest), "--checkpoints", "all")
    orch("preserve", run, "--dest", str(tmp / "archived"), "--checkpoints", "all", "--archive", "tar.gz")
    [bundle] = [p for p in dest.iterdir() if not p.name.startswith(".")]
    files = [p for p in bundle.rglob("*") if p.is_file()]
    assert len(files) > 10
    for p in files:
        _no_secret_in(p.read_bytes(), p)
    [archive] = [p for p in (tmp / "archived").iterdir() if not p.name.startswith(".")]
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        assert len(members) == len(files)
        for m in members:
            _no_secret_in(tar.extractfile(m).read(), f"{archive.name}:{m.name}")  # type: ignore[union-attr]
    orch("verify", str(bundle))
    orch("verify", str(archive))
    return bundle / "data"  # the payload of the bag: the run's files


def test_submit_refuses_secrets_in_env(orch, tmp_path: Path) -> None:
    spec = spec_file(tmp_path, "refuse")
    res = orch("submit", str(spec), "--set", f"env.GHTOKEN={GH}", check=2)
    assert "env" in res.stderr and "GHTOKEN looks like a secret" in res.stderr and "Export it in your shell" in res.stderr
    res = orch("submit", str(spec), "--set", f"env.MY_VAR={GH}", check=2)
    assert "MY_VAR has a value that looks like a secret" in res.stderr
    res = orch("submit", str(spec), "--set", f"env.DBPASSWORD={PASSWORD}", "--dry-run", check=2)
    assert "DBPASSWORD looks like a secret" in res.stderr
    for r in (res.stdout, res.stderr):
        _no_secret_in(r.encode(), "output")
    assert "Traceback" not in res.stderr and not any(orch.results.iterdir())  # nothing was created
    orch("submit", str(spec), "--set", "env.CUBLAS_WORKSPACE_CONFIG=:4096:8", "--set", "env.MONKEY_MODE=fast",
         "--set", "env.WANDB_PROJECT=orch-tests-2025", "--dry-run")  # not secrets


def test_real_run_provenance_and_bundle_hold_no_secret(orch, tmp_path: Path) -> None:
    orch.env.update({"HF_TOKEN": HF, "ORCH_API_TOKEN": "plainsecret-4321", "ORCH_NOTE": GH, "MY_VAR": GH,
                     "SLURM_COMMENT": JWT, "DBPASSWORD": PASSWORD})
    spec = spec_file(tmp_path, "prov")
    rows = orch.json("submit", str(spec), "--set", "config.wandb_api_key=plainsecret-4321",
                     "--set", f"config.note=see {GH}")
    run_dir = Path(rows[0]["run_dir"])
    wait_until(lambda: json.loads((run_dir / "run.json").read_text()).get("state") == "COMPLETED", 180,
               "the run to complete", run_dir)
    prov_text = (run_dir / "provenance.json").read_text()
    _no_secret_in(prov_text.encode(), "provenance.json")
    prov = json.loads(prov_text)
    assert prov["command"][:2] == ["orch", "submit"] and "config.wandb_api_key=<redacted>" in prov["command"]
    assert prov["env"]["ORCH_RESULTS"] == str(orch.results)  # the environment is still recorded
    assert not {"HF_TOKEN", "ORCH_API_TOKEN", "ORCH_NOTE", "SLURM_COMMENT", "MY_VAR"} & set(prov["env"])
    assert GH in (run_dir / "spec.yaml").read_text()  # the run's own spec holds what the user set
    bundle = _check_bundle_and_archive(orch, run_dir.name, tmp_path)
    cfg = yaml.safe_load((bundle / "spec.yaml").read_text())["config"]
    assert cfg["wandb_api_key"] == "<redacted>" and cfg["note"] == "see <redacted>" and cfg["fail"] == "none"


def test_fabricated_run_files_with_passwords(orch, tmp_path: Path) -> None:
    p = make_run(orch.results, name="leaky")
    spec = yaml.safe_load(p.spec.read_text())
    spec["env"]["DBPASSWORD"] = PASSWORD
    spec["monitor"] = {"webhook": "https://hooks.slack.com/services/T0001/B0001/" + GH[4:28]}
    for f in [p.spec, *p.ckpt.glob("*/spec.yaml")]:
        f.write_text(yaml.safe_dump(spec, sort_keys=False))
    p.job_script.write_text(f"#!/usr/bin/env bash\nexport DBPASSWORD='{PASSWORD}'\nexport OMP_NUM_THREADS=1\n"
                            f"exec python -m orchestrator.job {p.root}\n")
    rec = json.loads(p.run_json.read_text())
    rec["failure"] = {"class": "user_error", "summary": f"ConnectionError: DBPASSWORD: {PASSWORD} rejected",
                      "evidence": [f"Authorization: Bearer {JWT}", f"push to https://me:{PASSWORD}@example.com"]}
    p.run_json.write_text(json.dumps(rec))
    p.stdout(2).write_text(f"connecting with DBPASSWORD={PASSWORD}\nusing token {HF}\nstep 10 loss 2.0\n")
    (p.root / "logs" / "big.log").write_bytes(b"step 1 loss 2.0 tokens_per_sec 12000\n" * 460_000
                                              + f"HF_TOKEN={HF}\n".encode() + b"done\n")  # > 16 MiB: streamed
    with open(p.diagnostics, "a") as fh:
        fh.write(json.dumps({"step": 201, "loss": 1.0, "dominant_prediction": f"DBPASSWORD: {PASSWORD}"}) + "\n")
    bundle = _check_bundle_and_archive(orch, "leaky", tmp_path)
    job = (bundle / "job.sh").read_text()
    assert "export DBPASSWORD='<redacted>'" in job and "export OMP_NUM_THREADS=1" in job
    assert (bundle / "logs" / "big.log").read_bytes().endswith(b"HF_TOKEN=<redacted>\ndone\n")
    assert yaml.safe_load((bundle / "spec.yaml").read_text())["env"] == {"WANDB_API_KEY": "<redacted>",
                                                                        "OMP_NUM_THREADS": "1",
                                                                        "DBPASSWORD": "<redacted>"}
    readme = (bundle / "README.md").read_text()
    assert "## State, failure and attempts" in readme and "<redacted>" in readme
    notes = orch("preserve", "leaky", "--dest", str(tmp_path / "again"))
    assert "redacted" in notes.stdout + notes.stderr
