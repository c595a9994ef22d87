"""Bundles stay what was preserved: no hard links to the run's files unless asked, and `orch verify`
names every addition, an empty folder included.

Before: a bundle's checkpoints were hard links to the run's files, so a run that rewrote a
checkpoint in place silently changed its "preserved" copy; and a folder added to a bundle (empty,
so no file in it) passed `orch verify`.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from tests.integration.runfactory import make_run, orch

CKPT = Path("ckpt") / "best" / "model" / "model.safetensors"  # in the run; in a bundle, under data/


def _bundle(dest: Path) -> Path:
    [bundle] = [p for p in dest.iterdir() if not p.name.startswith(".")]
    return bundle


def _rewrite_in_place(path: Path) -> None:
    """What a trainer overwriting a checkpoint file does: same inode, new bytes."""
    with open(path, "r+b") as fh:
        fh.write(b"\x00" * 4096)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "results", ckpt_bytes=256 * 1024).root


def test_checkpoints_are_real_copies_by_default(run_dir: Path, tmp_path: Path) -> None:
    results, dest = run_dir.parent.parent, tmp_path / "kept"
    res = orch("preserve", run_dir.name, "--dest", str(dest), results=results, cwd=tmp_path, check=True)
    bundle = _bundle(dest)
    src, kept = run_dir / CKPT, bundle / "data" / CKPT
    assert kept.stat().st_ino != src.stat().st_ino and kept.stat().st_nlink == 1 and src.stat().st_nlink == 1
    original = kept.read_bytes()
    assert original == src.read_bytes() and " linked" not in res.stdout
    _rewrite_in_place(src)
    assert kept.read_bytes() == original  # the preserved copy did not change with the run
    assert orch("verify", str(bundle), results=results).returncode == 0


def test_hard_links_only_with_link(run_dir: Path, tmp_path: Path) -> None:
    results, dest = run_dir.parent.parent, tmp_path / "linked"
    res = orch("preserve", run_dir.name, "--dest", str(dest), "--link", results=results, cwd=tmp_path, check=True)
    bundle = _bundle(dest)
    src, kept = run_dir / CKPT, bundle / "data" / CKPT
    assert kept.stat().st_ino == src.stat().st_ino and "linked" in res.stdout  # asked for: shared
    assert (bundle / "data" / "logs" / "training.log").stat().st_ino != (run_dir / "logs" / "training.log").stat().st_ino
    _rewrite_in_place(src)  # ... which is why it is not the default: verify sees the change
    res = orch("verify", str(bundle), results=results)
    assert res.returncode == 1 and f"changed: data/{CKPT.as_posix()}" in res.stdout, res.stdout
    res = orch("preserve", run_dir.name, "--copy", "--link", results=results, cwd=tmp_path)
    assert res.returncode == 2 and "not allowed with" in res.stderr, res.stderr


def test_verify_names_added_folders(run_dir: Path, tmp_path: Path) -> None:
    results, dest = run_dir.parent.parent, tmp_path / "kept"
    orch("preserve", run_dir.name, "--dest", str(dest), results=results, cwd=tmp_path, check=True)
    bundle = _bundle(dest)
    (bundle / "extra").mkdir()
    (bundle / "data" / "ckpt" / "best" / "notes" / "deeper").mkdir(parents=True)
    res = orch("verify", str(bundle), results=results)
    assert res.returncode == 1, res.stdout
    assert "2 unexpected" in res.stdout and "unexpected: extra/ (folder)" in res.stdout, res.stdout
    assert "unexpected: data/ckpt/best/notes/deeper/ (folder)" in res.stdout
    os.rmdir(bundle / "extra")
    os.removedirs(bundle / "data" / "ckpt" / "best" / "notes" / "deeper")
    assert orch("verify", str(bundle), results=results).returncode == 0


def test_verify_names_added_folders_in_an_archive(run_dir: Path, tmp_path: Path) -> None:
    results, dest = run_dir.parent.parent, tmp_path / "kept"
    orch("preserve", run_dir.name, "--dest", str(dest), "--archive", "tar", results=results, cwd=tmp_path, check=True)
    archive = _bundle(dest)
    assert orch("verify", str(archive), results=results).returncode == 0
    top = archive.name.removesuffix(".tar")
    with tarfile.open(archive, "a") as tar:
        info = tarfile.TarInfo(f"{top}/smuggled")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    res = orch("verify", str(archive), results=results)
    assert res.returncode == 1 and "unexpected: smuggled/ (folder)" in res.stdout, res.stdout
