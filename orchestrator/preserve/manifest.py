"""Checksummed copies, bundle listings, and the `MANIFEST.sha256` of bundles made before BagIt.

Files are hashed while they are copied (one read of the source, big buffers, constant memory),
or reflinked (a copy-on-write copy: the bundle keeps its bytes when the run's file is later
changed) and then hashed once, so multi-GB checkpoints are read once. A hard link shares the
run's file itself (an in-place edit of the run changes the bundle), so it is only made when asked
for. Nothing here follows a symlink: a bundle is a tree of plain files.

`list_folder` reads a bundle folder once into a `Listing` (preserve.archive does the same for an
archive), which preserve.bag judges for a BagIt bundle and `judge_legacy` for the older layout:
the run's files beside `MANIFEST.sha256` in `sha256sum`'s own format (`sha256sum -c` works in it).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from orchestrator.errors import UserError

MANIFEST_NAME = "MANIFEST.sha256"
CHUNK = 8 * 1024 * 1024  # 8 MiB: large reads amortize syscalls; memory stays constant
_FICLONE = 0x40049409  # linux/fs.h: reflink a whole file (btrfs, xfs, bcachefs)


# ------------------------------------------------------------------------------ hashing
def hash_fd(fd: int, buf: bytearray | None = None) -> str:
    """sha256 of an open file descriptor, read from its current offset in big chunks."""
    h = hashlib.sha256()
    buf = buf or bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = os.readv(fd, [view])
        if not n:
            return h.hexdigest()
        h.update(view[:n])


def hash_file(path: Path | str) -> str:
    """sha256 of a regular file, refusing to follow a symlink at the last component."""
    fd = open_regular(path)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_regular(path: Path | str) -> int:
    """Open a regular file for reading without following a final symlink (O_NOFOLLOW)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a symlink; refusing to follow it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file")
    return fd


# ------------------------------------------------------------------------------ copying
# How a file gets into a bundle: a byte copy; a reflink, else a copy (the default: both are real,
# independent copies); a reflink, else a hard link, else a copy (`orch preserve --link`).
LINK_MODES = ("copy", "reflink", "hardlink")


def copy_hashed(src: Path, dst: Path, *, link: str = "reflink") -> tuple[str, str]:
    """Copy `src` to a new file `dst` and return (sha256, how) with how in copy|reflink|hardlink.

    `link` (one of LINK_MODES) says how far to go: "copy" reads+hashes+writes in one pass;
    "reflink" tries a copy-on-write clone first; "hardlink" also accepts a hard link, which shares
    the run's file (only on request). The source is hashed once either way.
    """
    if link not in LINK_MODES:
        raise ValueError(f"link={link!r}: expected one of {LINK_MODES}")
    fd = open_regular(src)
    try:
        if link != "copy":
            how = _try_link(fd, src, dst, hardlink=link == "hardlink")
            if how:
                return hash_fd(fd), how
        return _copy_fd(fd, dst), "copy"
    finally:
        os.close(fd)


def _try_link(src_fd: int, src: Path, dst: Path, *, hardlink: bool) -> str | None:
    try:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError:
        return None
    try:
        fcntl.ioctl(out, _FICLONE, src_fd)
        os.close(out)
        return "reflink"
    except OSError:
        os.close(out)
        os.unlink(dst)
    if not hardlink:
        return None
    try:
        os.link(src, dst, follow_symlinks=False)
        return "hardlink"
    except OSError:  # EXDEV (another filesystem), EPERM (protected_hardlinks), EMLINK...
        return None


def _copy_fd(src_fd: int, dst: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        while True:
            n = os.readv(src_fd, [view])
            if not n:
                break
            chunk = view[:n]
            h.update(chunk)  # hashlib releases the GIL for big buffers
            written = 0
            while written < n:
                written += os.write(out, chunk[written:])
        os.fsync(out)
    finally:
        os.close(out)
    return h.hexdigest()


# ------------------------------------------------------------------------------ format
def _unescape(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 1 < len(name):
            nxt = name[i + 1]
            out.append({"\\": "\\", "n": "\n", "r": "\r"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def safe_relpath(rel: str, where: str = "manifest") -> str:
    """Reject absolute paths and '..' so a manifest never reaches outside its bundle."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UserError(f"{where}: unsafe path {rel!r} (absolute, empty or with '..')")
    return rel


def parse_manifest(text: str, where: str = MANIFEST_NAME) -> dict[str, str]:
    """Parse sha256sum output (text or binary mode); raise UserError naming a bad line."""
    entries: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        escaped = line.startswith("\\")
        body = line[1:] if escaped else line
        digest, sep, name = body.partition(" ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest) or not name:
            raise UserError(f"{where}:{lineno}: not a sha256sum line: {line[:80]!r}")
        name = name[1:] if name[:1] in (" ", "*") else name
        name = _unescape(name) if escaped else name
        name = name[2:] if name.startswith("./") else name
        safe_relpath(name, f"{where}:{lineno}")
        if name in entries:
            raise UserError(f"{where}:{lineno}: {name!r} is listed twice")
        entries[name] = digest.lower()
    return entries


def read_manifest(bundle: Path) -> dict[str, str]:
    path = bundle / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{bundle} has no {MANIFEST_NAME}: not a bundle (or an unfinished one)",
                        hint="bundles are made by `orch preserve`") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    return parse_manifest(text, str(path))


# ------------------------------------------------------------------------------ verifying
@dataclass
class Verification:
    """What `orch verify` found in one bundle (paths relative to the bundle)."""

    bundle: Path
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # bag-level: Payload-Oxum, RO-Crate, bagit.txt

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.unexpected or self.problems)


@dataclass
class Listing:
    """Everything in one bundle (a folder or an archive), read once: the sha256 and size of every
    regular file, the bytes of the few small files asked for (`texts`), entries that are not
    regular files (`odd`), and every folder."""

    bundle: Path
    files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    texts: dict[str, bytes] = field(default_factory=dict)
    odd: list[str] = field(default_factory=list)
    folders: set[str] = field(default_factory=set)


def walk_files(root: Path, *, dirs: bool = False) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry below `root` as (relative posix path, entry), never following symlinks.

    Directories are descended; anything else (files, symlinks, fifos) is yielded, and with `dirs`
    so is every folder (as "path/"): a manifest lists files only, so an added empty folder is
    otherwise invisible.
    """
    stack: list[tuple[str, str]] = [("", str(root))]
    while stack:
        prefix, path = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                rel = f"{prefix}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", entry.path))
                    if dirs:
                        yield rel + "/", entry
                else:
                    yield rel, entry


def list_folder(bundle: Path, keep: Iterable[str] = ()) -> Listing:
    """Hash every file of a bundle folder once (never following a symlink); keep the bytes of
    the files named in `keep`."""
    keep = set(keep)
    out = Listing(bundle)
    buf = bytearray(CHUNK)
    for rel, entry in sorted(walk_files(bundle, dirs=True), key=lambda t: t[0]):
        if rel.endswith("/"):
            out.folders.add(rel[:-1])
            continue
        if not entry.is_file(follow_symlinks=False):
            out.odd.append(rel)
            continue
        try:
            fd = open_regular(entry.path)
        except (UserError, OSError):
            out.odd.append(rel)
            continue
        try:
            if rel in keep:
                data = b""
                while chunk := os.read(fd, CHUNK):
                    data += chunk
                out.texts[rel] = data
                out.files[rel], out.sizes[rel] = hash_bytes(data), len(data)
            else:
                out.files[rel] = hash_fd(fd, buf)
                out.sizes[rel] = os.fstat(fd).st_size
        finally:
            os.close(fd)
    return out


def unexplained_folders(folders: Iterable[str], files: Iterable[str], keep: Iterable[str] = ()) -> list[str]:
    """Folders no file (listed or present) lives in, innermost only: what was added empty."""
    used = set(keep)
    for rel in files:
        parts = rel.split("/")
        used.update("/".join(parts[:i]) for i in range(1, len(parts)))
    extra = set(folders) - used
    return sorted(d for d in extra if not any(e.startswith(d + "/") for e in extra))


def judge_legacy(listing: Listing) -> Verification:
    """A bundle of the layout before BagIt (`MANIFEST.sha256` beside the run's files, README.md):
    every file compared with the manifest."""
    raw = listing.texts.get(MANIFEST_NAME)
    where = f"{listing.bundle}:{MANIFEST_NAME}"
    try:
        expected = parse_manifest((raw or b"").decode("utf-8"), where)
    except UnicodeDecodeError as exc:
        raise UserError(f"cannot read {where}: {exc}") from None
    result = Verification(listing.bundle)
    for rel, digest in sorted(listing.files.items()):
        if rel == MANIFEST_NAME:
            continue
        if rel not in expected:
            result.unexpected.append(rel)
            continue
        result.checked += 1
        if digest != expected[rel]:
            result.changed.append(rel)
    result.unexpected += [f"{rel} (not a regular file)" for rel in listing.odd]
    result.missing = sorted(set(expected) - set(listing.files))
    known = list(expected) + list(listing.files) + listing.odd
    result.unexpected += [f"{d}/ (folder)" for d in unexplained_folders(listing.folders, known)]
    return result


def diff_manifests(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Human-readable differences between two manifests (for 'refusing to overwrite')."""
    out: list[str] = []
    for rel in sorted(set(old) | set(new)):
        if rel not in new:
            out.append(f"only in the existing bundle: {rel}")
        elif rel not in old:
            out.append(f"new: {rel}")
        elif old[rel] != new[rel]:
            out.append(f"differs: {rel}")
    return out


def iter_lines(items: Iterable[str], limit: int = 20) -> Iterator[str]:
    items = list(items)
    yield from items[:limit]
    if len(items) > limit:
        yield f"... and {len(items) - limit} more"
