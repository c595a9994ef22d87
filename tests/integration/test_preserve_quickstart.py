"""End to end on real runs: a 3-point quickstart sweep trained by `orch submit --wait`, then
preserve -> verify -> tamper -> verify fails naming the file; preserve twice is a no-op; a preserve
killed mid-copy leaves no complete-looking bundle; `orch compare` prints the table and a PNG.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runfactory import REPO, orch, sigkill_mid_copy

QUICKSTART = REPO / "jobs" / "quickstart.yaml"
pytestmark = pytest.mark.skipif(not QUICKSTART.is_file(), reason="jobs/quickstart.yaml is absent")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    base = tmp_path_factory.mktemp("e2e")
    spec = base / "qs_sweep.yaml"
    spec.write_text(f"extends: {QUICKSTART}\nname: qs-sweep\n"
                    "train: {max_steps: 60}\neval: {every: 20, batches: 4, length_multiples: [2]}\n"
                    "checkpoint: {every: 20, keep_last: 2}\n"
                    "sweep: {grid: {train.lr: [0.001, 0.003, 0.01]}}\n")
    results = base / "results"
    res = orch("submit", str(spec), "--wait", results=results, cwd=base, timeout=900)
    assert res.returncode == 0, f"orch submit --wait failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    runs = sorted(p for p in (results / "qs-sweep").iterdir() if (p / "run.json").is_file())
    assert len(runs) == 3
    return results, runs


def _bundles(dest: Path) -> list[Path]:
    return sorted(p for p in dest.iterdir() if not p.name.startswith("."))


def test_preserve_verify_tamper_noop(sweep: tuple[Path, list[Path]], tmp_path: Path) -> None:
    results, runs = sweep
    dest = tmp_path / "preserved"
    run_id = runs[0].name
    res = orch("preserve", run_id, "--dest", str(dest), "--checkpoints", "all", results=results, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    [bundle] = _bundles(dest)
    payload = bundle / "data"
    assert (payload / "eval" / "metrics.json").is_file() and (payload / "plots" / "training_curves.png").is_file()
    assert any((payload / "ckpt").iterdir())
    assert orch("verify", str(bundle), results=results).returncode == 0
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", "-c", "--quiet", "manifest-sha256.txt"], cwd=bundle).returncode == 0
    readme = (payload / "README.md").read_text()
    assert "## Key results" in readme and "val_loss" in readme and "COMPLETED" in readme

    manifest_before = (bundle / "manifest-sha256.txt").read_text()
    again = orch("preserve", run_id, "--dest", str(dest), "--checkpoints", "all", results=results, cwd=tmp_path)
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert (bundle / "manifest-sha256.txt").read_text() == manifest_before

    work = tmp_path / "tamper"
    shutil.copytree(bundle, work, symlinks=True)
    target = work / "data" / "eval" / "metrics_history.jsonl"
    data = bytearray(target.read_bytes())
    data[5] ^= 0x01
    target.write_bytes(bytes(data))
    res = orch("verify", str(work), results=results)
    assert res.returncode == 1 and "changed: data/eval/metrics_history.jsonl" in res.stdout
    shutil.rmtree(work)
    shutil.copytree(bundle, work, symlinks=True)
    (work / "data" / "spec.yaml").unlink()
    res = orch("verify", str(work), results=results)
    assert res.returncode == 1 and "missing: data/spec.yaml" in res.stdout
    shutil.rmtree(work)
    shutil.copytree(bundle, work, symlinks=True)
    (work / "data" / "logs" / "extra.log").write_text("x")
    res = orch("verify", str(work), results=results)
    assert res.returncode == 1 and "unexpected: data/logs/extra.log" in res.stdout


def test_killed_preserve_of_real_run(sweep: tuple[Path, list[Path]], tmp_path: Path) -> None:
    results, runs = sweep
    copy_root = tmp_path / "results"
    run_copy = copy_root / "qs-sweep" / runs[1].name
    shutil.copytree(runs[1], run_copy, symlinks=True)
    ck = next(p for p in sorted((run_copy / "ckpt").iterdir()) if p.is_dir() and not p.name.startswith("."))
    big = ck / "big_fake_shard.bin"
    with open(big, "wb") as fh:
        fh.truncate(1536 * 1024 * 1024)
    dest = tmp_path / "preserved"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "--results", str(copy_root), "preserve",
                             runs[1].name, "--dest", str(dest), "--checkpoints", "all", "--copy"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not sigkill_mid_copy(proc, dest, f".tmp-*/data/ckpt/{ck.name}/big_fake_shard.bin"):
        pytest.skip("the copy finished before it could be interrupted")
    assert _bundles(dest) == []
    big.unlink()
    res = orch("preserve", runs[1].name, "--dest", str(dest), results=copy_root, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    [bundle] = _bundles(dest)
    assert orch("verify", str(bundle), results=copy_root).returncode == 0


def test_compare_sweep_png(sweep: tuple[Path, list[Path]], tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    results, runs = sweep
    png = tmp_path / "compare.png"
    res = orch("compare", "qs-sweep", "--plot", str(png), results=results, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "train.lr" in res.stdout and "val_loss" in res.stdout
    for lr in ("0.001", "0.003", "0.01"):
        assert f"lr={lr}" in res.stdout
    assert png.stat().st_size > 10_000
    img = mpimg.imread(png)
    assert img.shape[0] >= 300 and img.shape[1] >= 400
    rgb = img[..., :3]
    assert rgb.std() > 0.05 and (rgb.max(axis=2) - rgb.min(axis=2) > 0.2).mean() > 0.002
