"""Checkpoint selection, secret redaction and bundle naming (no subprocess)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrator.preserve.ckptselect import select
from orchestrator.preserve.bundle import is_secret_file, redact


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


def test_redact() -> None:
    obj = {"env": {"WANDB_API_KEY": "abc", "HF_TOKEN": "x", "OMP_NUM_THREADS": "1"},
           "tokens_per_sec": 5.0, "note": "hf_" + "a" * 30, "password": "p", "key_count": 3}
    clean, changed = redact(obj)
    assert changed
    assert clean["env"]["WANDB_API_KEY"] != "abc" and clean["env"]["HF_TOKEN"] != "x"
    assert clean["env"]["OMP_NUM_THREADS"] == "1" and clean["tokens_per_sec"] == 5.0 and clean["key_count"] == 3
    assert "hf_aaaa" not in clean["note"] and clean["password"] != "p"
    assert redact({"val_loss": 1.0})[1] is False


def test_secret_files() -> None:
    for n in (".env", "prod.env", "id_rsa", "id_ed25519.pub", "server.pem", "tls.key", ".netrc", "credentials.json"):
        assert is_secret_file(n), n
    for n in ("tokenizer.json", "metrics.json", "model.safetensors", "keys_to_success.txt"):
        assert not is_secret_file(n), n
