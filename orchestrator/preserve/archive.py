"""Bundles as single archives (`tar`, `tar.gz`, `tar.zst`) that `orch verify` checks in place.

Why: a bundle bound for cold storage or another site is easier to move as one file. The
manifest is stored first in the archive so a no-op check reads only its head, and verification
streams the members (no extraction, nothing written, no path in the archive is trusted).
zstd goes through the `zstd` program, as Python has no zstd module before 3.14.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import IO, Iterator

from orchestrator.errors import UserError
from orchestrator.preserve.manifest import CHUNK, MANIFEST_NAME, Verification, parse_manifest, walk_files

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst")


def _fmt(path: Path) -> str:
    name = path.name
    if name.endswith(".tar.zst"):
        return "tar.zst"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    return "tar"


def _zstd() -> str:
    exe = shutil.which("zstd")
    if not exe:
        raise UserError("the zstd program is not installed", hint="install zstd, or use --archive tar.gz")
    return exe


def write_archive(folder: Path, out: Path, fmt: str, *, arcname: str) -> None:
    """Write `folder` as `out` (MANIFEST first), members named `<arcname>/<path>`; fsync'd."""
    files = sorted(rel for rel, _ in walk_files(folder))
    files.sort(key=lambda r: r != MANIFEST_NAME)
    proc = None
    with open(out, "xb") as raw:
        stream: IO[bytes] = raw
        if fmt == "tar.zst":
            proc = subprocess.Popen([_zstd(), "-q", "-T0", "-c"], stdin=subprocess.PIPE, stdout=raw)
            stream = proc.stdin  # type: ignore[assignment]
        try:
            if fmt == "tar.gz":
                tar = tarfile.open(fileobj=stream, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT)
            else:
                tar = tarfile.open(fileobj=stream, mode="w|", bufsize=CHUNK, format=tarfile.PAX_FORMAT)
            with tar:
                for rel in files:
                    info = tar.gettarinfo(str(folder / rel), arcname=f"{arcname}/{rel}")
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(folder / rel, "rb") as fh:
                        tar.addfile(info, fh)
        finally:
            if proc is not None:
                proc.stdin.close()  # type: ignore[union-attr]
                if proc.wait() != 0:
                    raise UserError(f"zstd failed writing {out}")
        raw.flush()
        os.fsync(raw.fileno())


@contextlib.contextmanager
def _open(path: Path) -> Iterator[tarfile.TarFile]:
    """A streaming reader of any of our archive formats."""
    fmt = _fmt(path)
    proc = None
    try:
        if fmt == "tar.zst":
            proc = subprocess.Popen([_zstd(), "-q", "-d", "-c", str(path)], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
            tar = tarfile.open(fileobj=proc.stdout, mode="r|", bufsize=CHUNK)
        else:
            tar = tarfile.open(str(path), mode="r|gz" if fmt == "tar.gz" else "r|", bufsize=CHUNK)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot read archive {path}: {exc}") from None
    try:
        yield tar
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path}: damaged archive ({exc})") from None
    finally:
        tar.close()
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()


def _rel(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


def read_archive_member(path: Path, rel: str) -> bytes | None:
    """The bytes of `<bundle>/<rel>` in an archive (None when absent or unreadable)."""
    try:
        with _open(path) as tar:
            for m in tar:
                if m.isfile() and _rel(m.name) == rel:
                    fh = tar.extractfile(m)
                    return fh.read() if fh else None
    except UserError:
        return None
    return None


def verify_archive(path: Path) -> Verification:
    """Hash every member of an archived bundle against the manifest stored in it."""
    result = Verification(path)
    expected: dict[str, str] | None = None
    seen: dict[str, str] = {}
    folders: set[str] = set()
    with _open(path) as tar:
        for m in tar:
            rel = _rel(m.name)
            if m.isdir():
                if "/" in m.name.rstrip("/"):  # not the bundle's own top folder
                    folders.add(rel.rstrip("/"))
                continue
            if rel == MANIFEST_NAME and m.isfile():
                fh = tar.extractfile(m)
                expected = parse_manifest(fh.read().decode("utf-8"), f"{path}:{MANIFEST_NAME}") if fh else {}
                continue
            if m.islnk():
                digest = seen.get(_rel(m.linkname))
            elif m.isfile():
                h = hashlib.sha256()
                fh = tar.extractfile(m)
                while fh is not None and (chunk := fh.read(CHUNK)):
                    h.update(chunk)
                digest = h.hexdigest()
            else:
                result.unexpected.append(f"{rel} (not a regular file)")
                continue
            if digest:
                seen[rel] = digest
    if expected is None:
        raise UserError(f"{path} holds no {MANIFEST_NAME}: not a bundle archive")
    for rel, digest in sorted(seen.items()):
        if rel not in expected:
            result.unexpected.append(rel)
        else:
            result.checked += 1
            if digest != expected[rel]:
                result.changed.append(rel)
    result.missing = sorted(set(expected) - set(seen))
    # A folder member that no listed file lives in was added (orch writes no folder members).
    used = {"/".join(r.split("/")[:i]) for r in list(expected) + list(seen) for i in range(1, r.count("/") + 1)}
    result.unexpected += [f"{d}/ (folder)" for d in sorted(folders - used)]
    return result
