"""MANIFEST.sha256: sha256sum-compatible format, hashing while copying, verification."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import UserError
from orchestrator.preserve.manifest import MANIFEST_NAME, copy_hashed, hash_file, parse_manifest, render_manifest
from orchestrator.preserve.verify import verify_bundle


def _bundle(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    (b / "eval").mkdir(parents=True)
    (b / "eval" / "metrics.json").write_text('{"val_loss": 1.0}\n')
    (b / "ckpt" / "step-1").mkdir(parents=True)
    (b / "ckpt" / "step-1" / "model.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (b / "odd name with spaces.txt").write_text("x")
    (b / "back\\slash.txt").write_text("y")
    entries = {}
    for p in b.rglob("*"):
        if p.is_file():
            entries[p.relative_to(b).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    (b / MANIFEST_NAME).write_text(render_manifest(entries))
    return b


def test_roundtrip_and_sha256sum_compatible(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    text = (b / MANIFEST_NAME).read_text()
    parsed = parse_manifest(text)
    assert len(parsed) == 4 and "back\\slash.txt" in parsed
    assert text.splitlines() == sorted(text.splitlines(), key=lambda l: l.lstrip("\\").split("  ", 1)[1])
    if shutil.which("sha256sum"):
        res = subprocess.run(["sha256sum", "-c", "--quiet", MANIFEST_NAME], cwd=b, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
    assert verify_bundle(b).ok


def test_parse_accepts_binary_marker_and_dot_slash() -> None:
    d = "a" * 64
    assert parse_manifest(f"{d} *./x/y.bin\n") == {"x/y.bin": d}


@pytest.mark.parametrize("line", ["nothex  file", "a" * 64 + "  ../escape", "a" * 64 + "  /etc/passwd", "a" * 63 + "  x"])
def test_parse_rejects_bad_or_unsafe_lines(line: str) -> None:
    with pytest.raises(UserError):
        parse_manifest(line + "\n")


def test_duplicate_entries_rejected() -> None:
    d = "b" * 64
    with pytest.raises(UserError, match="twice"):
        parse_manifest(f"{d}  x\n{d}  x\n")


def test_verify_reports_changed_missing_unexpected(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    model = b / "ckpt" / "step-1" / "model.bin"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    (b / "eval" / "metrics.json").unlink()
    (b / "eval" / "extra.txt").write_text("new")
    os.symlink("/etc/passwd", b / "link")
    res = verify_bundle(b)
    assert not res.ok
    assert res.changed == ["ckpt/step-1/model.bin"]
    assert res.missing == ["eval/metrics.json"]
    assert "eval/extra.txt" in res.unexpected
    assert any(u.startswith("link") for u in res.unexpected)


def test_verify_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a bundle"):
        verify_bundle(tmp_path)
    with pytest.raises(UserError):
        verify_bundle(tmp_path / "absent")


@pytest.mark.parametrize("link", ["copy", "reflink", "hardlink"])
def test_copy_hashed_single_pass(tmp_path: Path, link: str) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(9 * 1024 * 1024 + 3))  # more than one 8 MiB chunk
    dst = tmp_path / "dst.bin"
    digest, how = copy_hashed(src, dst, link=link)
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest() == hash_file(dst)
    assert dst.read_bytes() == src.read_bytes()
    if link == "copy":
        assert how == "copy" and os.stat(src).st_ino != os.stat(dst).st_ino
    elif link == "reflink":  # never a hard link: the bundle's file is its own
        assert how in ("reflink", "copy") and os.stat(src).st_ino != os.stat(dst).st_ino
    else:
        assert how in ("reflink", "hardlink", "copy")


def test_copy_refuses_symlink_and_existing(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    os.symlink(tmp_path / "real", tmp_path / "ln")
    with pytest.raises(UserError, match="symlink"):
        copy_hashed(tmp_path / "ln", tmp_path / "out")
    (tmp_path / "out2").write_text("keep")
    with pytest.raises(FileExistsError):
        copy_hashed(tmp_path / "real", tmp_path / "out2")
    assert (tmp_path / "out2").read_text() == "keep"
