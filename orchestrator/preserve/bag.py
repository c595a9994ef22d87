"""The BagIt layout (RFC 8493) of a preserved bundle: writing its tag files, judging a listing.

Why BagIt: archives and libraries already check bags with their own tools (`bagit.py --validate`,
the Library of Congress' bagger, ...), so a bundle stays verifiable without orch. A bundle is

    bagit.txt                 BagIt-Version 1.0, UTF-8
    bag-info.txt              Bagging-Date, Payload-Oxum, Bag-Software-Agent, External-Identifier (the run id), ...
    manifest-sha256.txt       `<sha256>  data/<path>` for every payload file
    tagmanifest-sha256.txt    the same for the three tag files above
    data/                     the payload: the run's files, README.md, PRESERVED.json, plots, and the
                              RO-Crate metadata `data/ro-crate-metadata.json` (preserve.crate)

The payload is hashed while it is copied (preserve.bundle), so writing the bag costs no second
read. Paths in manifests are percent-encoded as RFC 8493 2.1.3 says (`%`, CR, LF only); for any
other name `sha256sum -c manifest-sha256.txt` works in the bundle folder too.

`judge` compares one `Listing` of a bundle (a folder or an archive, read once) with its tag files:
every manifest entry's hash, missing and added files (payload and tag files), added empty
folders, Payload-Oxum, the tag manifest, and the RO-Crate metadata (preserve.crate.check).
"""
from __future__ import annotations

import re
from typing import Iterable

from orchestrator.errors import UserError
from orchestrator.preserve.crate import METADATA, check as check_crate
from orchestrator.preserve.manifest import Listing, Verification, hash_bytes, safe_relpath, unexplained_folders

PAYLOAD = "data"
BAGIT_TXT = "bagit.txt"
BAG_INFO = "bag-info.txt"
MANIFEST = "manifest-sha256.txt"
TAGMANIFEST = "tagmanifest-sha256.txt"
DECLARATION = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
# Written first into an archive, so a reader of the head finds what the bundle should hold.
TAG_FILES = (BAGIT_TXT, BAG_INFO, MANIFEST, TAGMANIFEST)


# ------------------------------------------------------------------------------ format
def _encode(path: str) -> str:
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _decode(path: str) -> str:
    return re.sub(r"%(25|0[dD]|0[aA])", lambda m: {"25": "%", "0D": "\r", "0A": "\n"}[m.group(1).upper()], path)


def render_manifest(entries: dict[str, str]) -> str:
    """`<sha256>  <path>` lines sorted by path (bag-relative paths, e.g. `data/eval/metrics.json`)."""
    return "".join(f"{entries[rel]}  {_encode(rel)}\n" for rel in sorted(entries))


def parse_manifest(text: str, where: str) -> dict[str, str]:
    """A BagIt manifest; raise UserError naming a malformed, unsafe or duplicated line."""
    entries: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = re.match(r"^([0-9a-fA-F]{64})[ \t]+\*?(.+)$", line)
        if not m:
            raise UserError(f"{where}:{lineno}: not a `<sha256> <path>` line: {line[:80]!r}")
        rel = _decode(m.group(2))
        rel = rel[2:] if rel.startswith("./") else rel
        safe_relpath(rel, f"{where}:{lineno}")
        if rel in entries:
            raise UserError(f"{where}:{lineno}: {rel!r} is listed twice")
        entries[rel] = m.group(1).lower()
    return entries


def parse_info(text: str) -> dict[str, str]:
    """bag-info.txt as {label: first value}; continuation lines (leading whitespace) are folded."""
    out: dict[str, str] = {}
    label = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and label:
            out[label] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            label = key.strip()
            if label in out:
                label = None  # a repeated label: the first one counts
                continue
            out[label] = value.strip()
    return out


def render_info(fields: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{k}: {' '.join(str(v).split())}\n" for k, v in fields)


def oxum(sizes: Iterable[int]) -> str:
    """Payload-Oxum: `<octets>.<files>`."""
    sizes = list(sizes)
    return f"{sum(sizes)}.{len(sizes)}"


def tag_files(payload: dict[str, str], sizes: dict[str, int], info: list[tuple[str, str]]) -> dict[str, bytes]:
    """The four tag files of a bag whose payload files (payload-relative paths) have these hashes
    and sizes; `info` comes first in bag-info.txt, Payload-Oxum is added."""
    tags = {BAGIT_TXT: DECLARATION,
            BAG_INFO: render_info([*info, ("Payload-Oxum", oxum(sizes.values()))]).encode("utf-8"),
            MANIFEST: render_manifest({f"{PAYLOAD}/{rel}": d for rel, d in payload.items()}).encode("utf-8")}
    tags[TAGMANIFEST] = render_manifest({rel: hash_bytes(data) for rel, data in tags.items()}).encode("utf-8")
    return tags


def payload_manifest(text: str, where: str) -> dict[str, str]:
    """The payload entries of manifest-sha256.txt, payload-relative (`eval/metrics.json`)."""
    return {rel[len(PAYLOAD) + 1:]: d for rel, d in parse_manifest(text, where).items()
            if rel.startswith(PAYLOAD + "/")}


# ------------------------------------------------------------------------------ judging
def _text(listing: Listing, rel: str) -> str | None:
    raw = listing.texts.get(rel)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def judge(listing: Listing) -> Verification:
    """Compare a bag's files with its manifests, bag-info.txt and RO-Crate metadata."""
    where = str(listing.bundle)
    res = Verification(listing.bundle)
    declaration = _text(listing, BAGIT_TXT) or ""
    if not re.search(r"^BagIt-Version: *\d+\.\d+ *$", declaration, re.M) or "Tag-File-Character-Encoding" not in declaration:
        res.problems.append(f"{BAGIT_TXT} does not declare BagIt-Version and Tag-File-Character-Encoding")
    text = _text(listing, MANIFEST)
    expected = parse_manifest(text, f"{where}:{MANIFEST}") if text is not None else {}
    if text is None:
        res.problems.append(f"no readable {MANIFEST}: the payload cannot be checked")
    res.problems += [f"{MANIFEST} lists {rel}, which is outside {PAYLOAD}/" for rel in expected
                     if not rel.startswith(PAYLOAD + "/")]
    tag_text = _text(listing, TAGMANIFEST)
    tags = parse_manifest(tag_text, f"{where}:{TAGMANIFEST}") if tag_text is not None else {}
    if tag_text is None:
        res.missing.append(TAGMANIFEST)
    for rel, digest in sorted(listing.files.items()):
        want = expected.get(rel) if rel.startswith(PAYLOAD + "/") else tags.get(rel)
        if want is None:
            # tag files the tag manifest cannot list, and (without a manifest) the whole payload
            if rel not in (BAGIT_TXT, TAGMANIFEST) and (text is not None or not rel.startswith(PAYLOAD + "/")):
                res.unexpected.append(rel)
            continue
        res.checked += 1
        if digest != want:
            res.changed.append(rel)
    for rel in (BAGIT_TXT, MANIFEST):
        if rel not in listing.files and rel not in tags:
            res.missing.append(rel)
    res.missing += sorted((set(expected) | set(tags)) - set(listing.files))
    res.unexpected += [f"{rel} (not a regular file)" for rel in listing.odd]
    known = list(expected) + list(tags) + list(listing.files) + listing.odd
    res.unexpected += [f"{d}/ (folder)" for d in unexplained_folders(listing.folders, known, keep={PAYLOAD})]
    if PAYLOAD not in listing.folders:
        res.problems.append(f"no {PAYLOAD}/ folder (the payload)")
    info = parse_info(_text(listing, BAG_INFO) or "")
    payload = [size for rel, size in listing.sizes.items() if rel.startswith(PAYLOAD + "/")]
    if info.get("Payload-Oxum") and info["Payload-Oxum"] != oxum(payload):
        res.problems.append(f"{BAG_INFO}: Payload-Oxum {info['Payload-Oxum']} (octets.files), "
                            f"but the payload holds {oxum(payload)}")
    crate = f"{PAYLOAD}/{METADATA}"
    if crate in listing.texts:
        files = {rel[len(PAYLOAD) + 1:] for rel in listing.files if rel.startswith(PAYLOAD + "/")}
        dirs = {d[len(PAYLOAD) + 1:] for d in listing.folders if d.startswith(PAYLOAD + "/")}
        res.problems += [f"{crate}: {p}" for p in check_crate(listing.texts[crate], files, dirs)]
    elif crate not in expected:
        res.problems.append(f"{crate} is absent: no RO-Crate metadata")
    return res
