"""Crash-safe file writes and tolerant readers for the run folder.

State files are replaced by rename (temp file + fsync + rename), so a reader sees the old or
the new file, never half of one. JSONL files are appended a line at a time; readers skip a
truncated line (a writer killed mid-line, a disk that filled up), and a later append never joins it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


_UMASK: int | None = None


def current_umask() -> int:
    """The process umask, read without changing it (os.umask(0) would race with other threads)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Umask:"):
                        _UMASK = int(line.split()[1], 8)
                        break
        except OSError:
            pass
        if _UMASK is None:  # no /proc: the classic way, once, at first use
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def set_umask(mask: int) -> None:
    """Change the process umask (a cluster profile's `umask:`) and what current_umask() reports."""
    global _UMASK
    os.umask(mask)
    _UMASK = mask


def file_mode() -> int:
    """The mode a plain `open()` would give a new file: 0644 under umask 022, 0664 under 002."""
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: Path | str, data: bytes, *, fsync: bool = True) -> None:
    """Replace `path` with `data` atomically (same-directory temp file, then rename).

    The file gets the mode the umask gives a new file (mkstemp's own 0600 would hide run folders
    and bundles from the rest of a team)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:  # first write into a new folder (checked lazily: mkdir costs a syscall)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def replace_dir(new: Path | str, target: Path | str, aside: Path | str, *,
                sync: Callable[[Path], None] | None = None) -> None:
    """Put the finished folder `new` in place of `target` with renames only: an existing `target`
    (folder, file or link) moves to `aside` first and is removed once `new` is in place, so a reader
    sees the old or the new folder, never half of one. `sync(parent)` runs between (an fsync)."""
    new, target, aside = Path(new), Path(target), Path(aside)
    had = os.path.lexists(target)
    if had:
        os.rename(target, aside)
    os.rename(new, target)
    if sync is not None:
        sync(target.parent)
    if had:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink()


def atomic_write_text(path: Path | str, text: str, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: Path | str, obj: Any, *, fsync: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", fsync=fsync)


def read_json(path: Path | str, default: Any = None) -> Any:
    """Read a JSON file; `default` when it is missing, unreadable (permissions, I/O errors) or not
    JSON (never raises for those). `record.read_json_strict` says which, for run.json."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return default


def append_jsonl(path: Path | str, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write() so concurrent appenders do not interleave.

    A writer that died mid-line, or whose write was cut short by a full disk, leaves a torn tail
    without a newline: this append then starts on a new line, so the torn fragment stays a line of
    its own (readers skip it) and the new record is never glued onto it. A short write (the disk
    filled up part way) is finished or raises OSError; it is never silently dropped.
    """
    line = (json.dumps(record, default=str, allow_nan=True) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    except FileNotFoundError:  # the first line of a file in a folder not made yet (eval/, logs/)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a torn tail: keep it apart from this record
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            if written <= 0:  # pragma: no cover - write(2) raises rather than return 0 for files
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            view = view[written:]
    finally:
        os.close(fd)


def iter_jsonl(path: Path | str) -> Iterator[dict[str, Any]]:
    """Yield records, skipping blank, truncated or corrupt lines (nothing when unreadable)."""
    try:
        fh = open(path, "rb")
    except OSError:
        return
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # a writer was killed mid-line: ignore the fragment
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict):
                yield rec


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


def tail_jsonl(path: Path | str, n: int = 1, *, chunk: int = 8192) -> list[dict[str, Any]]:
    """The last `n` complete records, reading backwards from the end of the file.

    Cost depends on the size of the last records, not on the length of the file, which keeps
    `orch status` fast on long metrics histories.
    """
    try:
        fh = open(path, "rb")
    except OSError:
        return []
    with fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        buf = b""
        pos = end
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            fh.seek(pos)
            buf = fh.read(step) + buf
            if buf.count(b"\n") > n + 1:
                break
    lines = buf.split(b"\n")
    # the last element is b"" after a complete line, or a fragment of a truncated one
    lines = lines[:-1]
    if pos > 0:
        lines = lines[1:]  # the first may be partial
    out: list[dict[str, Any]] = []
    for raw in reversed(lines):
        if len(out) >= n:
            break
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    out.reverse()
    return out


@contextlib.contextmanager
def dir_lock(path: Path | str) -> Iterator[None]:
    """An exclusive flock on a directory itself: no lock file to create (a metadata write that
    costs ~0.5 ms on a busy or network filesystem, times every run of a 1,000-point sweep)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path | str, *, blocking: bool = True) -> Iterator[bool]:
    """An advisory flock held for the block; yields False when non-blocking and taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
