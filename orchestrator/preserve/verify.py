"""`orch verify`'s one entry point: a bundle folder or archive, read once and judged by its layout.

A BagIt bundle (`bagit.txt` at its top) is judged by preserve.bag (manifests, Payload-Oxum, tag
manifest, RO-Crate metadata); a bundle of the layout before BagIt (`MANIFEST.sha256` beside the
run's files) by preserve.manifest.judge_legacy, so old bundles keep verifying.
"""
from __future__ import annotations

from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.preserve import bag
from orchestrator.preserve.archive import ARCHIVE_SUFFIXES, list_archive
from orchestrator.preserve.crate import METADATA
from orchestrator.preserve.manifest import MANIFEST_NAME, Listing, Verification, judge_legacy, list_folder

# Small files whose bytes a judge reads: the tag files, the crate, the old manifest.
_KEEP = (*bag.TAG_FILES, f"{bag.PAYLOAD}/{METADATA}", MANIFEST_NAME)


def judge(listing: Listing) -> Verification:
    """A listing judged by the layout it shows."""
    if bag.BAGIT_TXT in listing.files:
        return bag.judge(listing)
    if MANIFEST_NAME in listing.files:
        return judge_legacy(listing)
    raise UserError(f"{listing.bundle} holds neither {bag.BAGIT_TXT} nor {MANIFEST_NAME}: not a bundle",
                    hint="bundles are made by `orch preserve`")


def verify_bundle(bundle: Path | str) -> Verification:
    """Every file of a bundle (folder or archive) compared with its manifests."""
    bundle = Path(bundle)
    if bundle.is_dir():
        if not any((bundle / name).is_file() for name in (bag.BAGIT_TXT, MANIFEST_NAME)):
            raise UserError(f"{bundle} holds neither {bag.BAGIT_TXT} nor {MANIFEST_NAME}: not a bundle",
                            hint="pass the folder `orch preserve` printed")
        return judge(list_folder(bundle, _KEEP))
    if bundle.exists() and bundle.name.endswith(ARCHIVE_SUFFIXES):
        return judge(list_archive(bundle, _KEEP))
    raise UserError(f"{bundle} is not a bundle folder or archive", hint="pass the path `orch preserve` printed")
