"""`orch preserve` and `orch verify` through the real CLI, on fabricated run folders."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runfactory import REPO, make_run, orch, sigkill_mid_copy

SECRET_VALUES = ("abc123-secret-value", "hf_xxxxxxxx", "hf_secretsecret", "OPENSSH PRIVATE KEY")


@pytest.fixture
def env(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    make_run(results)
    return results, tmp_path / "preserved"


def _bundle(dest: Path) -> Path:
    bundles = [p for p in dest.iterdir() if not p.name.startswith(".")]
    assert len(bundles) == 1, bundles
    return bundles[0]


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # not blank: lines, text and axes on a white background


def test_preserve_then_verify(env: tuple[Path, Path], tmp_path: Path) -> None:
    results, dest = env
    res = orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path, check=True)
    bundle = _bundle(dest)
    assert bundle.name == "2025-03-14_quick" and str(bundle) in res.stdout
    for rel in ("bagit.txt", "bag-info.txt", "manifest-sha256.txt", "tagmanifest-sha256.txt"):
        assert (bundle / rel).is_file(), rel
    payload = bundle / "data"
    for rel in ("ro-crate-metadata.json", "README.md", "spec.yaml", "provenance.json", "checks.json", "run.json",
                "eval/metrics.json", "eval/metrics_history.jsonl", "eval/predictions.jsonl", "logs/training.log",
                "logs/train_diagnostics.jsonl", "plots/training_curves.png", "ckpt/best/model/model.safetensors",
                "tokenizer/tokenizer.json"):
        assert (payload / rel).is_file(), rel
    assert not (payload / "ckpt" / "step-00000200").exists()  # policy best
    # the checkpoint's spec.yaml was redacted, and its manifest restated: the bundled checkpoint still validates
    from orchestrator.record.checkpoints import validate

    assert "abc123-secret-value" not in (payload / "ckpt" / "best" / "spec.yaml").read_text()
    assert validate(payload / "ckpt" / "best", deep=True) is None
    assert orch("verify", str(bundle), results=results).returncode == 0
    if shutil.which("sha256sum"):
        for manifest in ("manifest-sha256.txt", "tagmanifest-sha256.txt"):
            assert subprocess.run(["sha256sum", "-c", "--quiet", manifest], cwd=bundle).returncode == 0
    readme = (payload / "README.md").read_text()
    for heading in ("## Key results", "## Checks", "## Diagnostics summary", "## Throughput and GPU memory",
                    "## Configuration", "## State, failure and attempts", "pd.read_json", "plots/training_curves.png"):
        assert heading in readme, heading
    assert "PASS" in readme and "tokens_per_sec" in readme and "mem_peak_mb" in readme
    _png_ok(payload / "plots" / "training_curves.png")


def test_secrets_and_escaping_symlinks_never_copied(env: tuple[Path, Path], tmp_path: Path) -> None:
    results, dest = env
    run_dir = next((results / "quick").iterdir())
    outside = tmp_path / "outside.txt"
    outside.write_text("private data outside the run")
    os.symlink(outside, run_dir / "logs" / "escape.log")
    os.symlink(tmp_path, run_dir / "eval" / "escape_dir")
    orch("preserve", "quick", "--dest", str(dest), "--checkpoints", "all", results=results, cwd=tmp_path, check=True)
    bundle = _bundle(dest)
    names = {p.relative_to(bundle / "data").as_posix() for p in (bundle / "data").rglob("*")}
    assert ".env" not in names and "id_rsa" not in names and "heartbeat.json" not in names
    assert "logs/escape.log" not in names and not any(n.startswith("eval/escape_dir") for n in names)
    assert not any("escape" in n.split("/")[1:2] for n in names if n.startswith("ckpt/"))
    assert not any(".tmp-" in n for n in names)
    for p in bundle.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            for s in SECRET_VALUES + ("private data outside",):
                assert s.encode() not in blob, (p, s)
    meta = json.loads((bundle / "data" / "PRESERVED.json").read_text())
    assert any("escape.log" in s for s in meta["skipped"]) and any(".env" in s for s in meta["skipped"])
    assert orch("verify", str(bundle), results=results).returncode == 0


def test_tampering_is_named(env: tuple[Path, Path], tmp_path: Path) -> None:
    results, dest = env
    orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path, check=True)
    bundle = _bundle(dest)
    weights = bundle / "data" / "ckpt" / "best" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.unlink()  # a hard link: replace, don't edit the run's checkpoint in place
    weights.write_bytes(bytes(data))
    res = orch("verify", str(bundle), results=results)
    assert res.returncode == 1 and "changed: data/ckpt/best/model/model.safetensors" in res.stdout
    (bundle / "data" / "eval" / "predictions.jsonl").unlink()
    (bundle / "data" / "eval" / "notes.txt").write_text("added by hand")
    res = orch("verify", str(bundle), results=results)
    assert res.returncode == 1
    assert "missing: data/eval/predictions.jsonl" in res.stdout and "unexpected: data/eval/notes.txt" in res.stdout
    # the run's own checkpoint was not touched through the hard link
    run_weights = next((results / "quick").iterdir()) / "ckpt" / "best" / "model" / "model.safetensors"
    assert run_weights.read_bytes() != bytes(data)


def test_idempotent_refuse_then_force(env: tuple[Path, Path], tmp_path: Path) -> None:
    results, dest = env
    orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path, check=True)
    bundle = _bundle(dest)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in bundle.rglob("*")}
    res = orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path, check=True)
    assert "unchanged" in res.stdout
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in bundle.rglob("*")} == before
    run_dir = next((results / "quick").iterdir())
    with open(run_dir / "eval" / "metrics_history.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 250, "val_loss": 0.9, "val_ppl": 2.4}) + "\n")
    res = orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "differs: eval/metrics_history.jsonl" in res.stderr and "--force" in res.stderr
    res = orch("preserve", "quick", "--dest", str(dest), "--force", results=results, cwd=tmp_path, check=True)
    assert "replaced" in res.stdout
    assert _bundle(dest) == bundle and orch("verify", str(bundle), results=results).returncode == 0
    assert "0.9" in (bundle / "data" / "eval" / "metrics_history.jsonl").read_text()


def test_copies_by_default_links_only_when_asked(env: tuple[Path, Path], tmp_path: Path) -> None:
    results, _ = env
    run_dir = next((results / "quick").iterdir())
    src = run_dir / "ckpt" / "best" / "model" / "model.safetensors"
    orch("preserve", "quick", "--dest", str(tmp_path / "a"), results=results, cwd=tmp_path, check=True)
    orch("preserve", "quick", "--dest", str(tmp_path / "b"), "--link", results=results, cwd=tmp_path, check=True)
    copied = _bundle(tmp_path / "a") / "data" / "ckpt" / "best" / "model" / "model.safetensors"
    linked = _bundle(tmp_path / "b") / "data" / "ckpt" / "best" / "model" / "model.safetensors"
    assert copied.stat().st_ino != src.stat().st_ino and copied.read_bytes() == src.read_bytes()
    assert linked.stat().st_ino == src.stat().st_ino  # same filesystem: --link hard-links checkpoints
    # the same content either way: identical manifests
    assert (_bundle(tmp_path / "a") / "manifest-sha256.txt").read_text() == (_bundle(tmp_path / "b") / "manifest-sha256.txt").read_text()
    # logs are never linked: a run still appending must not change its bundle
    assert (_bundle(tmp_path / "b") / "data" / "logs" / "training.log").stat().st_ino != (run_dir / "logs" / "training.log").stat().st_ino


def test_killed_midway_leaves_no_complete_looking_bundle(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = make_run(results)
    big = run.ckpt / "best" / "model" / "huge.bin"
    with open(big, "wb") as fh:  # sparse: instant to make, but a real 1.5 GB to read, hash and write
        fh.truncate(1536 * 1024 * 1024)
    dest = tmp_path / "preserved"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "--results", str(results), "preserve", "quick",
                             "--dest", str(dest), "--copy"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not sigkill_mid_copy(proc, dest, ".tmp-*/data/ckpt/best/model/huge.bin"):
        pytest.skip("the copy finished before it could be interrupted")
    visible = [p for p in dest.iterdir() if not p.name.startswith(".")]
    assert visible == []  # nothing that looks like a bundle
    assert not list(dest.glob(".tmp-*/*manifest-sha256.txt"))
    big.unlink()  # keep the retry quick
    orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path, check=True)
    assert not list(dest.glob(".tmp-*")), "stale temporary folder of the killed preserve was not cleaned"
    assert orch("verify", str(_bundle(dest)), results=results).returncode == 0


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "tar.zst"])
def test_archives_verify(env: tuple[Path, Path], tmp_path: Path, fmt: str) -> None:
    if fmt == "tar.zst" and not shutil.which("zstd"):
        pytest.skip("zstd not installed")
    results, dest = env
    orch("preserve", "quick", "--dest", str(dest), "--archive", fmt, results=results, cwd=tmp_path, check=True)
    archive = _bundle(dest)
    assert archive.name == f"2025-03-14_quick.{fmt}"
    res = orch("verify", str(archive), results=results)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "unchanged" in orch("preserve", "quick", "--dest", str(dest), "--archive", fmt, results=results,
                               cwd=tmp_path, check=True).stdout
    if fmt == "tar":  # flip a byte inside a member's data
        raw = bytearray(archive.read_bytes())
        idx = raw.find(b'"val_loss"')
        raw[idx + 1] ^= 0x20
        archive.write_bytes(bytes(raw))
        res = orch("verify", str(archive), results=results)
        assert res.returncode == 1 and "changed:" in res.stdout


def test_same_name_other_run_gets_suffix(tmp_path: Path) -> None:
    results = tmp_path / "results"
    make_run(results, seed=1)
    make_run(results, seed=2)
    dest = tmp_path / "preserved"
    orch("preserve", "quick", "--dest", str(dest), results=results, cwd=tmp_path, check=True)
    names = sorted(p.name for p in dest.iterdir() if not p.name.startswith("."))
    assert names == ["2025-03-14_quick", "2025-03-14_quick_0002"]
    res = orch("verify", *(str(dest / n) for n in names), results=results)
    assert res.returncode == 0 and res.stdout.count("OK ") == 2


def test_bad_input_exit_2(env: tuple[Path, Path], tmp_path: Path) -> None:
    results, dest = env
    cases = [("preserve", "no-such-run", "--dest", str(dest)),
             ("preserve", "quick", "--checkpoints", "some"),
             ("preserve", "quick", "--dest", str(next((results / "quick").iterdir()) / "inner")),
             ("verify", str(tmp_path)),
             ("verify", str(tmp_path / "absent")),
             ("plot", "no-such-run")]
    for args in cases:
        res = orch(*args, results=results, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr and "error:" in res.stderr, (args, res.stderr)
    bad = tmp_path / "badbundle"
    bad.mkdir()
    (bad / "MANIFEST.sha256").write_text("zzz  ../../etc/passwd\n")
    res = orch("verify", str(bad), results=results)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_preserve_run_api(env: tuple[Path, Path]) -> None:
    from orchestrator.preserve.bundle import preserve_run
    from orchestrator.record.tree import ResultsRoot

    results, dest = env
    run = ResultsRoot(results).resolve("quick")
    path = preserve_run(run, dest, checkpoints="none")
    assert (path / "bagit.txt").is_file() and not (path / "data" / "ckpt").exists()
    assert preserve_run(run, dest, checkpoints="none") == path
