"""Bundles are BagIt bags with RO-Crate metadata: checked through the real CLI and by the standards'
own libraries (`bagit`, `rocrate`); bundles of the layout before BagIt still verify; preserving
again after `orch check` / `orch monitor` succeeds; no lock file outlives a preserve.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable

import pytest
import yaml

from runfactory import REPO, make_run, orch

bagit = pytest.importorskip("bagit", reason="the bagit library (extra `preserve`) is not installed")
rocrate_lib = pytest.importorskip("rocrate.rocrate", reason="the rocrate library (extra `preserve`) is not installed")

RUN_ID = "quick-20250314-101500-0000"
SECRETS = ("abc123-secret-value", "hf_xxxxxxxx", "hf_secretsecret")


@pytest.fixture
def preserved(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    make_run(results)
    orch("preserve", "quick", "--dest", str(tmp_path / "preserved"), results=results, cwd=tmp_path, check=True)
    return results, tmp_path / "preserved" / "2025-03-14_quick"


def test_bagit_and_rocrate_libraries_accept_the_bundle(preserved: tuple[Path, Path]) -> None:
    _, bundle = preserved
    bag = bagit.Bag(str(bundle))
    bag.validate()  # every payload hash, Payload-Oxum, completeness, the tag manifest
    assert bag.info["External-Identifier"] == RUN_ID and bag.info["Bag-Software-Agent"].startswith("orch ")
    octets, streams = bag.info["Payload-Oxum"].split(".")
    payload = [p for p in (bundle / "data").rglob("*") if p.is_file()]
    assert int(streams) == len(payload) and int(octets) == sum(p.stat().st_size for p in payload)
    assert sorted(bag.payload_entries()) == sorted(p.relative_to(bundle).as_posix() for p in payload)

    crate = rocrate_lib.ROCrate(bundle / "data")
    ids = {e.id for e in crate.data_entities}
    for rel in ("spec.yaml", "eval/metrics.json", "eval/metrics_history.jsonl", "README.md", "run.json",
                "plots/training_curves.png", "logs/training.log", "ckpt/best/"):
        assert rel in ids, (rel, sorted(ids))
    files = [e for e in crate.get_entities() if "File" in (e.type if isinstance(e.type, list) else [e.type])]
    assert files and all((bundle / "data" / e.id).is_file() for e in files)
    action = crate.get("#run")
    assert action.type == "CreateAction" and str(action["actionStatus"]).endswith("CompletedActionStatus")
    assert action["instrument"]["softwareVersion"] == "0123abcd"  # the git commit from provenance.json
    assert {"eval/metrics.json", "ckpt/best/"} <= {e.id for e in action["result"]}
    inputs = {e.id: e for e in action["object"]}
    assert "spec.yaml" in inputs and inputs["#param-train.lr"]["value"] == 0.001
    for name in ("data/ro-crate-metadata.json", "bag-info.txt"):
        text = (bundle / name).read_text()
        assert not any(s in text for s in SECRETS), name


def _flip_byte(work: Path) -> None:
    target = work / "data" / "eval" / "metrics_history.jsonl"
    data = bytearray(target.read_bytes())
    data[5] ^= 0x01
    target.write_bytes(bytes(data))


TAMPERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "changed byte": (_flip_byte, "changed: data/eval/metrics_history.jsonl"),
    "missing file": (lambda w: (w / "data" / "eval" / "predictions.jsonl").unlink(),
                     "missing: data/eval/predictions.jsonl"),
    "added file": (lambda w: (w / "data" / "logs" / "extra.log").write_text("added by hand\n"),
                   "unexpected: data/logs/extra.log"),
}


def test_tampering_is_caught_by_orch_verify_and_by_bagit(preserved: tuple[Path, Path], tmp_path: Path) -> None:
    results, bundle = preserved
    for case, (tamper, named) in TAMPERS.items():
        work = tmp_path / "tamper" / case.replace(" ", "_")
        shutil.copytree(bundle, work)
        tamper(work)
        res = orch("verify", str(work), results=results)
        assert res.returncode == 1 and named in res.stdout, (case, res.stdout, res.stderr)
        with pytest.raises(bagit.BagValidationError):
            bagit.Bag(str(work)).validate()
    # a missing file also breaks Payload-Oxum and the RO-Crate's promise; orch verify says so
    res = orch("verify", str(tmp_path / "tamper" / "missing_file"), results=results)
    assert "Payload-Oxum" in res.stdout and "names the file eval/predictions.jsonl" in res.stdout, res.stdout


def test_archive_carries_the_bag(preserved: tuple[Path, Path], tmp_path: Path) -> None:
    results, _ = preserved
    dest = tmp_path / "archived"
    orch("preserve", "quick", "--dest", str(dest), "--archive", "tar.gz", results=results, cwd=tmp_path, check=True)
    archive = dest / "2025-03-14_quick.tar.gz"
    assert orch("verify", str(archive), results=results).returncode == 0
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[:4] == [f"2025-03-14_quick/{n}" for n in ("bagit.txt", "bag-info.txt", "manifest-sha256.txt",
                                                               "tagmanifest-sha256.txt")]
        tar.extractall(tmp_path / "x", filter="data")
    bagit.Bag(str(tmp_path / "x" / "2025-03-14_quick")).validate()
    assert "eval/metrics.json" in {e.id for e in rocrate_lib.ROCrate(tmp_path / "x" / "2025-03-14_quick" / "data").data_entities}


def _old_layout(bundle: Path, out: Path) -> Path:
    """The bundle as orch wrote it before BagIt: the run's files, README.md and PRESERVED.json at the
    top, and MANIFEST.sha256 in sha256sum's format."""
    shutil.copytree(bundle / "data", out)
    (out / "ro-crate-metadata.json").unlink()
    lines = sorted(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(out).as_posix()}\n"
                   for p in out.rglob("*") if p.is_file())
    (out / "MANIFEST.sha256").write_text("".join(sorted(lines, key=lambda line: line[66:])))
    return out


def test_old_layout_bundles_still_verify_and_are_upgraded(preserved: tuple[Path, Path], tmp_path: Path) -> None:
    results, bundle = preserved
    old = _old_layout(bundle, tmp_path / "old" / bundle.name)
    res = orch("verify", str(old), results=results)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=old).returncode == 0
    with tarfile.open(tmp_path / "old.tar", "w") as tar:  # an old archive: MANIFEST first
        tar.add(old / "MANIFEST.sha256", f"{old.name}/MANIFEST.sha256")
        for p in sorted(old.rglob("*")):
            if p.is_file() and p.name != "MANIFEST.sha256":
                tar.add(p, f"{old.name}/{p.relative_to(old).as_posix()}")
    assert orch("verify", str(tmp_path / "old.tar"), results=results).returncode == 0
    res = orch("compare", str(old), "quick", "--json", results=results, cwd=tmp_path)  # still read as a bundle
    assert res.returncode == 0, res.stdout + res.stderr
    assert [r["kind"] for r in json.loads(res.stdout)["runs"]] == ["bundle", "run"]
    (old / "eval" / "predictions.jsonl").write_text("edited\n")
    res = orch("verify", str(old), results=results)
    assert res.returncode == 1 and "changed: eval/predictions.jsonl" in res.stdout
    (old / "eval" / "predictions.jsonl").write_bytes((bundle / "data" / "eval" / "predictions.jsonl").read_bytes())
    # preserving the run again where its old-layout bundle lies makes it a bag (same run files)
    res = orch("preserve", "quick", "--dest", str(old.parent), results=results, cwd=tmp_path)
    assert res.returncode == 0 and "updated" in res.stdout, res.stdout + res.stderr
    assert not (old / "MANIFEST.sha256").exists()
    bagit.Bag(str(old)).validate()


def test_preserve_again_after_check_and_monitor_succeeds(tmp_path: Path) -> None:
    results, dest = tmp_path / "results", tmp_path / "preserved"
    run = make_run(results)
    spec = yaml.safe_load(run.spec.read_text())
    spec.pop("env")  # a valid spec, so `orch check` and `orch monitor` judge and annotate the run
    run.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
    res = orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path, check=True)
    assert "created" in res.stdout
    bundle = dest / "2025-03-14_quick"
    before = {p: p.read_bytes() for p in (run.run_json, run.checks)}
    orch("check", "quick", results=results, cwd=tmp_path)
    orch("monitor", "--once", results=results, cwd=tmp_path)
    assert all(p.read_bytes() != raw for p, raw in before.items()), "check/monitor changed neither run.json nor checks.json"
    res = orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"updated {bundle}" in res.stdout and "already preserved" in res.stdout
    assert "checks.json" in res.stdout and "run.json" in res.stdout
    assert json.loads((bundle / "data" / "checks.json").read_text()) == json.loads(run.checks.read_text())
    assert orch("verify", str(bundle), results=results).returncode == 0
    bagit.Bag(str(bundle)).validate()
    assert "unchanged" in orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path, check=True).stdout
    metrics = json.loads(run.metrics.read_text())
    metrics["final"]["val_loss"] = 0.5  # a real change still needs --force
    run.metrics.write_text(json.dumps(metrics))
    res = orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path)
    assert res.returncode == 2 and "differs: eval/metrics.json" in res.stderr and "--force" in res.stderr


def test_no_lock_file_outlives_preserves(tmp_path: Path) -> None:
    results, dest = tmp_path / "results", tmp_path / "preserved"
    make_run(results)
    dest.mkdir()
    for name in (".lock-2025-03-14_quick", ".lock-2024-01-01_other"):  # as orch left them before
        (dest / name).write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "orchestrator", "--results", str(results), "preserve", "quick", "--dest", str(dest)]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # two at once: serialised by the lock
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = sorted(re.search(rf"^{RUN_ID}: (\w+) ", out, re.M).group(1) for out, _ in outs)  # type: ignore[union-attr]
    assert said == ["created", "unchanged"], outs
    assert sorted(os.listdir(dest)) == ["2025-03-14_quick"]  # no .lock-*, no scratch folder
    assert not [p for p in (dest / "2025-03-14_quick").rglob("*") if "lock" in p.name]
