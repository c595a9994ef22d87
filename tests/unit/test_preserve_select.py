"""Which checkpoints a bundle keeps (orchestrator/record/checkpoints.select) and bundle naming
(no subprocess; secrets: test_secrets.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.record import checkpoints as ck
from orchestrator.record.checkpoints import select


def _ck(root: Path, name: str, step: int, kind: str = "step", **metrics: float) -> None:
    """A checkpoint as the trainer leaves it (filled in .tmp-<name>, sealed, renamed)."""
    tmp = ck.tmp_dir(root, name)
    (tmp / "model").mkdir(parents=True)
    (tmp / "model" / "weights").write_bytes(b"w" * step)
    ck.seal(tmp, kind=kind, step=step, metrics=metrics)
    ck.publish(tmp, root / name)


def test_trainer_layout(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    _ck(root, "step-00000100", 100)
    _ck(root, "step-00000200", 200)
    _ck(root, "best", 100, kind="best")
    _ck(root, "hf-final", 200, kind="final")
    (root / "step-00000300").mkdir()  # no manifest: never last
    (root / ".tmp-step-00000400").mkdir()  # a save in progress: never anything
    os.symlink("/etc", root / "escape")  # never followed
    assert select(tmp_path, "best").folders == ["best"]
    last = select(root, "last")
    assert last.folders == ["step-00000200", "hf-final"] and last.roles == {"last": "step-00000200", "final": "hf-final"}
    assert any("ckpt/step-00000300 is not a complete checkpoint" in n for n in last.notes)
    assert select(root, "none").folders == []
    assert select(root, "all").folders == ["best", "hf-final", "step-00000100", "step-00000200", "step-00000300"]
    assert select(root, "all").roles == {"best": "best", "last": "step-00000200", "final": "hf-final"}


def test_damaged_checkpoints_are_never_chosen(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    _ck(root, "step-00000100", 100)
    _ck(root, "step-00000200", 200)
    (root / "step-00000200" / "model" / "weights").write_bytes(b"short")
    sel = select(root, "last")
    assert sel.folders == ["step-00000100"]
    assert any("ckpt/step-00000200 is damaged (model/weights has 5 bytes" in n for n in sel.notes)


def test_best_without_a_best_folder_uses_the_manifest_metrics(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    _ck(root, "step-00000100", 100, val_loss=1.0, acc=0.2)
    _ck(root, "step-00000200", 200, val_loss=1.5, acc=0.9)
    sel = select(root, "best")
    assert sel.folders == ["step-00000100"] and sel.roles == {"best": "step-00000100"}
    assert any("best kept step checkpoint by val_loss (min)" in n for n in sel.notes)
    assert select(root, "best", metric="acc", mode="max").folders == ["step-00000200"]
    sel = select(root, "best", metric="bleu")  # no such metric: the newest, with a note
    assert sel.folders == ["step-00000200"] and any("the newest" in n for n in sel.notes)


def test_missing_ckpt_and_unknown_policy(tmp_path: Path) -> None:
    sel = select(tmp_path / "nope", "best")
    assert sel.folders == [] and sel.notes == ["the run has no ckpt/ folder"]
    with pytest.raises(ValueError, match="use one of none, best, last, all"):
        select(tmp_path, "newest")
