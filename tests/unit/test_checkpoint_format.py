"""The checkpoint folder format (orchestrator/record/checkpoints.py): sealing, publishing, listing,
validation, finding, rotation and clean-up, without torch."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.record import checkpoints as ck


def make(root: Path, name: str, step: int, kind: str = "step", metrics: dict | None = None,
         payload: bytes = b"weights") -> Path:
    """A checkpoint written the way the trainer writes one: fill .tmp-<name>, seal, publish."""
    tmp = ck.tmp_dir(root, name)
    (tmp / "model").mkdir(parents=True)
    (tmp / "model" / "model.safetensors").write_bytes(payload)
    if kind == "step":
        (tmp / "state").mkdir()
        (tmp / "state" / "optimizer.bin").write_bytes(b"adam" * 10)
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
    ck.seal(tmp, kind=kind, step=step, tokens_seen=step * 10, metrics=metrics or {})
    ck.publish(tmp, root / name)
    return root / name


def test_seal_and_publish_write_a_complete_folder(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    path = make(root, ck.step_name(500), 500, metrics={"val_loss": 1.25})
    assert path.name == "step-00000500" and not ck.tmp_dir(root, path.name).exists()
    manifest = ck.read_manifest(path)
    assert manifest is not None and manifest["format"] == ck.FORMAT and manifest["kind"] == "step"
    assert manifest["files"] == {"model/model.safetensors": 7, "state/optimizer.bin": 40, "trainer_state.json": 13}
    assert set(manifest["sha256"]) == set(manifest["files"])
    assert (path / "COMPLETE").read_text() == "500\n"
    [info] = ck.list_checkpoints(tmp_path)  # a run folder or its ckpt/ folder
    assert (info.kind, info.step, info.tokens_seen, info.metrics, info.resumable) == ("step", 500, 5000,
                                                                                      {"val_loss": 1.25}, True)
    assert info.model_dir == path / "model" and info.state_dir == path / "state"
    assert ck.validate(path, deep=True) is None


def test_publish_replaces_an_existing_folder(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make(root, "best", 10, kind="best", payload=b"old")
    make(root, "best", 20, kind="best", payload=b"new!")
    assert ck.find(tmp_path, best=True).step == 20
    assert (root / "best" / "model" / "model.safetensors").read_bytes() == b"new!"
    assert sorted(p.name for p in root.iterdir()) == ["best"]  # the old one moved aside, then deleted


@pytest.mark.parametrize("damage,expected", [
    (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
    (lambda p: (p / "manifest.json").write_text("{"), "not valid JSON"),
    (lambda p: (p / "COMPLETE").unlink(), "no COMPLETE marker"),
    (lambda p: (p / "state" / "optimizer.bin").unlink(), "state/optimizer.bin is listed in the manifest but missing"),
    (lambda p: (p / "state" / "optimizer.bin").write_bytes(b"x"), "has 1 bytes, the manifest says 40"),
])
def test_validate_names_what_is_wrong(tmp_path: Path, damage, expected: str) -> None:
    path = make(tmp_path / "ckpt", "step-00000010", 10)
    damage(path)
    assert expected in (ck.validate(path) or "")


def test_deep_validation_compares_hashes(tmp_path: Path) -> None:
    path = make(tmp_path / "ckpt", "step-00000010", 10)
    (path / "state" / "optimizer.bin").write_bytes(b"ADAM" * 10)  # same size
    assert ck.validate(path) is None
    assert ck.validate(path, deep=True) == "state/optimizer.bin does not match its sha256 in the manifest"


def test_validate_refuses_paths_leaving_the_folder(tmp_path: Path) -> None:
    path = make(tmp_path / "ckpt", "step-00000010", 10)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert "outside the checkpoint" in (ck.validate(path) or "")


def test_listing_skips_incomplete_temporary_and_linked_folders(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    for step in (100, 20, 3):
        make(root, ck.step_name(step), step)
    make(root, "best", 20, kind="best")
    make(root, "hf-final", 100, kind="final")
    torn = root / "step-00000200"  # a folder without a manifest (never written by the trainer)
    (torn / "model").mkdir(parents=True)
    (root / ".tmp-step-00000300").mkdir()
    os.symlink(root / "step-00000100", root / "step-00000400")
    assert [(c.kind, c.step) for c in ck.list_checkpoints(tmp_path)] == [
        ("step", 3), ("step", 20), ("step", 100), ("best", 20), ("final", 100)]
    assert [p.name for p in ck.step_folders(tmp_path)] == ["step-00000003", "step-00000020", "step-00000100",
                                                           "step-00000200"]
    assert ck.newest_valid(tmp_path).step == 100  # type: ignore[union-attr]
    (root / "step-00000100" / "state" / "optimizer.bin").write_bytes(b"")
    assert ck.newest_valid(tmp_path).step == 20  # type: ignore[union-attr]
    assert ck.find(tmp_path).step == 20 and ck.find(tmp_path, step=3).step == 3


def test_find_says_what_exists(tmp_path: Path) -> None:
    make(tmp_path / "ckpt", "step-00000010", 10)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 7 \(steps: 10\)"):
        ck.find(tmp_path, step=7)
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        ck.find(tmp_path, best=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ck.find(tmp_path / "elsewhere")


def test_rotate_and_clean_partial(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    for step in (10, 20, 30, 40):
        make(root, ck.step_name(step), step)
    make(root, "best", 10, kind="best")
    (root / ".tmp-step-00000050").mkdir()
    (root / ".old-best-123").mkdir()
    removed = ck.rotate(root, keep_last=2)
    assert [p.name for p in removed] == ["step-00000010", "step-00000020"]
    assert ck.clean_partial(tmp_path) and not any(p.name.startswith(".") for p in root.iterdir())
    assert [c.name for c in ck.list_checkpoints(root)] == ["step-00000030", "step-00000040", "best"]


def test_best_by_metric_follows_the_mode(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    for step, loss, acc in ((10, 2.0, 0.5), (20, 1.0, 0.7), (30, 1.5, 0.9)):
        make(root, ck.step_name(step), step, metrics={"val_loss": loss, "acc": acc, "nan": float("nan")})
    steps = ck.list_checkpoints(root, kinds=("step",))
    assert ck.best_by_metric(steps, "val_loss").step == 20  # type: ignore[union-attr]
    assert ck.best_by_metric(steps, "acc", "max").step == 30  # type: ignore[union-attr]
    assert ck.best_by_metric(steps, "nan") is None and ck.best_by_metric(steps, "missing") is None


def test_restate_file_keeps_a_manifest_true_for_changed_content(tmp_path: Path) -> None:
    path = make(tmp_path / "ckpt", "step-00000010", 10)
    (path / "trainer_state.json").write_text('{"step": 10, "note": "edited"}')
    manifest = json.loads((path / "manifest.json").read_text())
    assert ck.restate_file(manifest, "trainer_state.json", (path / "trainer_state.json").read_bytes())
    assert not ck.restate_file(manifest, "not/listed", b"")
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert ck.validate(path, deep=True) is None
