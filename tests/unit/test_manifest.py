"""Hashing while copying; the BagIt manifests and bag judging; the RO-Crate check; and bundles of
the layout before BagIt (`MANIFEST.sha256`, as `sha256sum` writes it) still verifying."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import UserError
from orchestrator.preserve import bag, crate
from orchestrator.preserve.manifest import MANIFEST_NAME, copy_hashed, hash_file, parse_manifest
from orchestrator.preserve.verify import verify_bundle

needs_sha256sum = pytest.mark.skipif(not shutil.which("sha256sum"), reason="sha256sum (coreutils) is not installed")


def _bundle(tmp_path: Path) -> Path:
    """A bundle of the layout before BagIt, its manifest written by `sha256sum` itself."""
    b = tmp_path / "bundle"
    (b / "eval").mkdir(parents=True)
    (b / "eval" / "metrics.json").write_text('{"val_loss": 1.0}\n')
    (b / "ckpt" / "step-1").mkdir(parents=True)
    (b / "ckpt" / "step-1" / "model.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (b / "odd name with spaces.txt").write_text("x")
    (b / "back\\slash.txt").write_text("y")
    names = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    out = subprocess.run(["sha256sum", "--", *names], cwd=b, capture_output=True, check=True).stdout
    (b / MANIFEST_NAME).write_bytes(out)
    return b


@needs_sha256sum
def test_old_layout_parsed_and_verified(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    parsed = parse_manifest((b / MANIFEST_NAME).read_text())
    assert len(parsed) == 4 and "back\\slash.txt" in parsed
    assert parsed["eval/metrics.json"] == hashlib.sha256((b / "eval" / "metrics.json").read_bytes()).hexdigest()
    res = verify_bundle(b)
    assert res.ok and res.checked == 4


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


@needs_sha256sum
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


# ------------------------------------------------------------------------------ BagIt
def _bag(tmp_path: Path) -> Path:
    """A bag as preserve writes it: payload files, a crate naming them, the four tag files."""
    b = tmp_path / "bag"
    payload = {"eval/metrics.json": b'{"val_loss": 1.0}\n', "odd%name\nwith newline.txt": b"x",
               "ckpt/best/model.bin": os.urandom(1000)}
    sizes = {rel: len(data) for rel, data in payload.items()}
    files = dict(sizes)
    raw = crate.build(_FakeRun(), files, {"best": "best"}, spec_rows=[("train.lr", 0.001)])
    payload[crate.METADATA] = raw
    for rel, data in payload.items():
        (b / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / "data" / rel).write_bytes(data)
    digests = {rel: hashlib.sha256(data).hexdigest() for rel, data in payload.items()}
    sizes = {rel: len(data) for rel, data in payload.items()}
    for name, data in bag.tag_files(digests, sizes, [("External-Identifier", "r-1")]).items():
        (b / name).write_bytes(data)
    return b


class _FakeRun:
    """What crate.build reads of a run (analysis.rundata.RunData's interface)."""

    name, run_id, state = "r", "r-1", "COMPLETED"
    record = {"created_at": "2025-01-01T00:00:00+00:00", "ended_at": "2025-01-01T01:00:00+00:00"}
    provenance = {"git": {"commit": "abc123", "dirty": True}, "command": ["orch", "submit", "x.yaml", "--token", "T0PSECRET"]}
    spec = {"trainer": "lm", "data": {"builtin": "arith"}}


def test_bag_manifest_percent_encoding_roundtrip() -> None:
    entries = {"data/a%b\r\nc.txt": "a" * 64, "data/plain name.txt": "b" * 64}
    text = bag.render_manifest(entries)
    assert "%25" in text and "%0D%0A" in text and len(text.splitlines()) == 2
    assert bag.parse_manifest(text, "m") == entries
    with pytest.raises(UserError, match="unsafe"):
        bag.parse_manifest("a" * 64 + "  data/../../etc/passwd\n", "m")


def test_bag_info_folding_and_oxum() -> None:
    info = bag.parse_info("External-Identifier: run-1\nExternal-Description: a long\n  folded value\nPayload-Oxum: 10.2\n")
    assert info == {"External-Identifier": "run-1", "External-Description": "a long folded value", "Payload-Oxum": "10.2"}
    assert bag.oxum([3, 7]) == "10.2"


def test_bag_judged_whole_then_every_tamper_named(tmp_path: Path) -> None:
    b = _bag(tmp_path)
    res = verify_bundle(b)
    assert res.ok, res
    assert res.checked == 7  # 4 payload files + bagit.txt, bag-info.txt, manifest-sha256.txt
    (b / "data" / "eval" / "metrics.json").write_text('{"val_loss": 0.1}\n')  # same size: Oxum holds
    (b / "data" / "ckpt" / "best" / "model.bin").unlink()
    (b / "data" / "added.txt").write_text("new")
    (b / "data" / "empty" / "deeper").mkdir(parents=True)
    (b / "bag-info.txt").write_text((b / "bag-info.txt").read_text() + "Note: edited\n")
    res = verify_bundle(b)
    assert res.changed == ["bag-info.txt", "data/eval/metrics.json"]
    assert res.missing == ["data/ckpt/best/model.bin"]
    assert res.unexpected == ["data/added.txt", "data/empty/deeper/ (folder)"]
    assert any("Payload-Oxum" in p for p in res.problems)
    assert any("names the file ckpt/best/model.bin" in p for p in res.problems)


def test_bag_without_manifest_is_damaged_not_unknown(tmp_path: Path) -> None:
    b = _bag(tmp_path)
    (b / "manifest-sha256.txt").unlink()
    res = verify_bundle(b)
    assert not res.ok and "manifest-sha256.txt" in res.missing
    assert not any(u.startswith("data/") for u in res.unexpected)  # the payload is not blamed


def test_crate_check() -> None:
    raw = crate.build(_FakeRun(), {"eval/metrics.json": 5, "ckpt/best/model.bin": None}, {"best": "best"},
                      spec_rows=[("train.lr", 0.001)])
    doc = json.loads(raw)
    by_id = {e["@id"]: e for e in doc["@graph"]}
    assert by_id["./"]["identifier"] == "r-1" and by_id["#source-code"]["version"] == "abc123"
    assert {"@id": "eval/metrics.json"} in by_id["#run"]["result"] and {"@id": "ckpt/best/"} in by_id["#run"]["result"]
    assert by_id["#param-train.lr"]["value"] == 0.001 and "T0PSECRET" not in raw.decode()
    assert crate.check(raw, {"eval/metrics.json", "ckpt/best/model.bin"}, {"eval", "ckpt", "ckpt/best"}) == []
    assert sorted(crate.check(raw, {"eval/metrics.json"}, {"eval"})) == [
        "names the file ckpt/best/model.bin, which is not in the bundle",
        "names the folder ckpt/best/, which is not in the bundle"]
    assert crate.check(b"{", set(), set())[0].startswith("not JSON")
