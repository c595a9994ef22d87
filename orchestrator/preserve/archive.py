"""Bundles as single archives (`tar`, `tar.gz`, `tar.zst`) that `orch verify` checks in place.

Why: a bundle bound for cold storage or another site is easier to move as one file. An archive
holds the whole bag (`<bundle>/bagit.txt`, ..., `<bundle>/data/...`), so `tar xf` gives a bag
that `bagit.py --validate` accepts. The tag files (manifests) are stored first so a no-op check
reads only the head, and verification streams the members into one `Listing` (no extraction,
nothing written, no path in the archive is trusted) judged like a folder (preserve.verify).
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
from typing import IO, Iterable, Iterator

from orchestrator.errors import UserError
from orchestrator.preserve.manifest import CHUNK, Listing, walk_files

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


def write_archive(folder: Path, out: Path, fmt: str, *, arcname: str, first: tuple[str, ...] = ()) -> None:
    """Write `folder` as `out` (the files named in `first` first, in that order), members named
    `<arcname>/<path>`; fsync'd."""
    files = sorted(rel for rel, _ in walk_files(folder))
    files.sort(key=lambda r: first.index(r) if r in first else len(first))
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


def list_archive(path: Path, keep: Iterable[str] = ()) -> Listing:
    """Hash every member of an archived bundle once (paths relative to its top folder); keep the
    bytes of the members named in `keep`. A hard-link member counts as a copy of its target."""
    keep = set(keep)
    out = Listing(path)
    with _open(path) as tar:
        for m in tar:
            rel = _rel(m.name).rstrip("/")
            if m.isdir():
                if "/" in m.name.rstrip("/"):  # not the bundle's own top folder
                    out.folders.add(rel)
                continue
            if m.islnk() and _rel(m.linkname) in out.files:
                target = _rel(m.linkname)
                out.files[rel], out.sizes[rel] = out.files[target], out.sizes[target]
                if target in out.texts:
                    out.texts[rel] = out.texts[target]
                continue
            if not m.isfile():
                out.odd.append(rel)
                continue
            h = hashlib.sha256()
            fh = tar.extractfile(m)
            data = bytearray() if rel in keep else None
            while fh is not None and (chunk := fh.read(CHUNK)):
                h.update(chunk)
                if data is not None:
                    data += chunk
            out.files[rel], out.sizes[rel] = h.hexdigest(), m.size
            if data is not None:
                out.texts[rel] = bytes(data)
    # Folders are implied by member paths even where the archive stores no folder member.
    for rel in list(out.files) + out.odd:
        parts = rel.split("/")
        out.folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return out
