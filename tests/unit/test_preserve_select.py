"""Checkpoint selection and bundle naming (no subprocess; secrets: test_secrets.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrator.preserve.ckptselect import select


def _ck(root: Path, name: str, complete: bool = True) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "weights").write_bytes(b"w")
    if complete:
        (root / name / "COMPLETE").write_text("1\n")


def test_trainer_layout(tmp_path: Path) -> None:
    ck = tmp_path / "ckpt"
    for n in ("step-00000100", "step-00000200", "best", "hf-final"):
        _ck(ck, n)
    _ck(ck, "step-00000300", complete=False)  # torn: never last
    (ck / ".tmp-step-00000400-1").mkdir()
    assert select(ck, "best").folders == ["best"]
    assert select(ck, "last").folders == ["step-00000200", "hf-final"]
    assert select(ck, "none").folders == []
    assert set(select(ck, "all").folders) == {"step-00000100", "step-00000200", "step-00000300", "best", "hf-final"}
    assert any("COMPLETE" in n for n in select(ck, "last").notes)


def test_best_symlink_marker_file_and_fallback(tmp_path: Path) -> None:
    ck = tmp_path / "ckpt"
    _ck(ck, "step-000100")
    _ck(ck, "step-000200")
    assert select(ck, "best").folders == ["step-000200"]  # no marker: newest, with a note
    assert select(ck, "best").notes
    (ck / "best.json").write_text(json.dumps({"step": 100}))
    assert select(ck, "best").folders == ["step-000100"]
    (ck / "best.json").unlink()
    os.symlink("step-000100", ck / "best")
    assert select(ck, "best").folders == ["step-000100"]
    os.unlink(ck / "best")
    os.symlink("/etc", ck / "best")  # leaves ckpt/: ignored
    assert select(ck, "best").folders == ["step-000200"]


def test_missing_ckpt(tmp_path: Path) -> None:
    assert select(tmp_path / "nope", "best").folders == []
