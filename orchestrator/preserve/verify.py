"""`orch verify`'s one entry point: a bundle folder or a bundle archive, checked against its manifest."""
from __future__ import annotations

from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.preserve.archive import ARCHIVE_SUFFIXES, verify_archive
from orchestrator.preserve.manifest import Verification, verify_folder


def verify_bundle(bundle: Path | str) -> Verification:
    """Every file of a bundle (folder or archive) compared with its manifest."""
    bundle = Path(bundle)
    if bundle.is_dir():
        return verify_folder(bundle)
    if bundle.exists() and bundle.name.endswith(ARCHIVE_SUFFIXES):
        return verify_archive(bundle)
    raise UserError(f"{bundle} is not a bundle folder or archive", hint="pass the path `orch preserve` printed")
