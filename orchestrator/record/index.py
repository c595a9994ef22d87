"""The run index: what `orch status` and `orch monitor` need to know about finished runs, kept.

Why: most runs of a big tree are finished and never change again, yet a plain scan reads every
run.json (and status every heartbeat, metrics tail and, for an undiagnosed failure, log tails)
on every call and every cron pass. With the index, a call costs one directory listing plus one
`stat` of run.json per run, and reads only the runs that are active or changed.

What: `results/.index/runs-NN.json`, 16 shards by a hash of `name/run_id` (a change rewrites a
sixteenth of it). One entry per finished (terminal) run: the stat of its run.json taken *before*
the record was read (inode, size, mtime_ns, ctime_ns), its state, current attempt and monitor
marker, and an opaque row its caller may attach (`orch status` keeps its summary there, tagged
with a version of the code that made it; rows of another version are ignored).

Never the source of truth: the run folder is. An entry is used only while its run.json's stat is
unchanged, so a run resumed, checked, annotated, edited by hand, made unreadable (chmod changes the
ctime) or replaced is read again, and a run folder added or deleted shows up in the listing. A
run.json changed less than SETTLE seconds ago is not indexed: a same-size rewrite within the same
timestamp tick could keep its stat. A finished run's other files (heartbeat, metrics history,
logs) are taken as final: changed alone, they are not seen until its run.json changes. Damaged
folders are never indexed (examined on every call, reported as before). A shard that is missing,
unreadable, not JSON or of another format is an empty one, rewritten on the next save.

Concurrency: shards are replaced atomically (`atomicio`), without a lock. Concurrent writers may
drop each other's additions (made again on a later call), never store a wrong entry: every entry
carries the stat its content was read under. Writing is best effort: a tree we may not write to
is served without an index.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from orchestrator.record.atomicio import atomic_write_bytes
from orchestrator.record.paths import RunPaths
from orchestrator.record.record import attempt_n
from orchestrator.record.states import State
from orchestrator.record.tree import Damaged, ResultsRoot, Run, examine

INDEX_DIR = ".index"
SHARDS = 16
FORMAT = 1
SETTLE = 1.0  # seconds: a run.json changed more recently than this is not indexed yet
_KEY = 4  # an entry: [ino, size, mtime_ns, ctime_ns, state, attempt, monitor marker, row]


class IndexEntry:
    """What the index knows about one finished run, valid as of the scan that made it (its run.json's
    stat was unchanged, or the record was just read): state, attempt and the monitor's marker."""

    __slots__ = ("raw", "shard")

    def __init__(self, raw: list[Any], shard: "_Shard") -> None:
        self.raw = raw  # [ino, size, mtime_ns, ctime_ns, state, attempt, marker, row], as stored
        self.shard = shard

    @property
    def state(self) -> State:
        return State(self.raw[4])

    @property
    def attempt(self) -> int:
        return int(self.raw[5])

    @property
    def marker(self) -> dict[str, Any]:
        """run.json's `monitor` key: the monitor's note of what it handled."""
        return self.raw[6] if isinstance(self.raw[6], dict) else {}


_TERMINAL = frozenset(s.value for s in State if s.terminal)


def code_version(*files: str) -> str:
    """A short hash of the contents of source files: the version tag of rows made by that code."""
    h = hashlib.sha1()
    for name in files:
        with open(name, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def index_dir(root: Path | str) -> Path:
    return Path(root) / INDEX_DIR


def _stat_key(name: str, dir_fd: Optional[int]) -> Optional[list[int]]:
    try:
        st = os.stat(name, dir_fd=dir_fd)
    except (OSError, ValueError):
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


@dataclass
class _Shard:
    path: Path
    rows: Optional[str] = None  # the version tag of the rows it holds
    entries: dict[str, list[Any]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)  # the keys of rows stored as lists of values
    kept: dict[str, list[Any]] = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def load(cls, path: Path) -> "_Shard":
        try:
            with open(path, "rb") as fh:
                data = json.loads(fh.read())
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
                raise ValueError("not an index shard")
            columns = data.get("columns") or []
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise ValueError("not an index shard")
        except (OSError, ValueError):  # missing, unreadable, torn or foreign: rebuilt from the run folders
            return cls(path, dirty=path.exists())
        rows = data.get("rows")
        return cls(path, rows if isinstance(rows, str) else None, data["entries"], columns)

    def row(self, stored: Any) -> Optional[dict[str, Any]]:
        """A stored row as a new dict (the caller may change it), or None."""
        if isinstance(stored, list):
            return dict(zip(self.columns, stored)) if len(stored) == len(self.columns) else None
        return dict(stored) if isinstance(stored, dict) else None

    def save(self) -> None:
        rows = {rel: self.row(e[7]) for rel, e in self.kept.items()}
        columns: list[str] = next((list(r) for r in rows.values() if r is not None), [])
        entries = {rel: e[:7] + [list(r.values()) if r is not None and list(r) == columns else r]
                   for (rel, e), r in zip(self.kept.items(), rows.values())}
        data = {"format": FORMAT, "rows": self.rows, "columns": columns, "entries": entries}
        atomic_write_bytes(self.path, json.dumps(data, separators=(",", ":"), default=str).encode("utf-8"),
                           fsync=False)  # a cache: a shard lost in a power cut is rebuilt


class Scan:
    """One listing of the tree with the index: `runs` and `damaged` exactly as
    `ResultsRoot.scan()` returns them, plus the rows kept for finished runs and `save()`."""

    def __init__(self, root: ResultsRoot, rows: Optional[str] = None) -> None:
        self.root = root
        self.rows = rows  # None: this caller keeps no rows (the monitor); rows found are kept as they are
        self.runs: list[Run] = []
        self.damaged: list[Damaged] = []
        self.read = 0  # run.json files read (not answered by the index)
        self._dir = index_dir(root.root)
        self._shards = [_Shard.load(self._dir / f"runs-{i:02d}.json") for i in range(SHARDS)]
        if rows is not None:
            for shard in self._shards:
                if shard.rows != rows:  # rows of other code: ignore them, replace them as they are made
                    shard.rows = rows
                    shard.dirty = shard.dirty or any(e[7] is not None for e in shard.entries.values()
                                                     if isinstance(e, list) and len(e) == 8)
                    for e in shard.entries.values():
                        if isinstance(e, list) and len(e) == 8:
                            e[7] = None
        self._scan()

    def _scan(self) -> None:
        settled = time.time_ns() - int(SETTLE * 1e9)
        for folder in self.root.folders():
            if isinstance(folder, Damaged):
                self.damaged.append(folder)
                continue
            group, gpath, entries = folder
            try:
                gfd: Optional[int] = os.open(gpath, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                gfd = None
            try:
                for entry in entries:
                    self._one(group, entry, gfd, settled)
            finally:
                if gfd is not None:
                    os.close(gfd)
        for shard in self._shards:
            if len(shard.kept) != len(shard.entries):
                shard.dirty = True  # entries of runs gone, changed or unlisted

    def _one(self, group: str, entry: os.DirEntry[str], gfd: Optional[int], settled: int) -> None:
        rel = f"{group}/{entry.name}"
        # The stat comes first: a run.json that changes after it fails the next call's comparison.
        key = _stat_key(f"{entry.name}/run.json" if gfd is not None else os.path.join(entry.path, "run.json"), gfd)
        shard = self._shards[zlib.crc32(rel.encode("utf-8", "surrogateescape")) % SHARDS]
        old = shard.entries.get(rel)
        if (key is not None and type(old) is list and len(old) == 8 and old[:_KEY] == key and old[4] in _TERMINAL
                and type(old[5]) is int):
            run = Run(RunPaths(entry.path))
            run.indexed = IndexEntry(old, shard)
            shard.kept[rel] = old
            self.runs.append(run)
            return
        found = examine(entry.path, group, grace=True)
        self.read += 1
        if found is None:
            return
        if isinstance(found, Damaged):
            self.damaged.append(found)
            return
        self.runs.append(found)
        state = found.state
        if key is not None and state.terminal and key[3] < settled and key[2] < settled:
            marker = found.record.get("monitor")
            raw = key + [state.value, attempt_n(found.record), marker if isinstance(marker, dict) else {}, None]
            shard.kept[rel] = raw
            shard.dirty = True
            found.indexed = IndexEntry(raw, shard)

    def row(self, run: Run) -> Optional[dict[str, Any]]:
        """A new copy of the row kept for this finished run (by a caller of the same row version), or None."""
        entry = run.indexed
        if entry is None or self.rows is None:
            return None
        return entry.shard.row(entry.raw[7])

    def keep_row(self, run: Run, row: dict[str, Any]) -> None:
        """Attach a row to this run's entry (ignored for a run that is not indexed: active, damaged,
        changed just now). The row must be made from what was read after this scan's stat."""
        entry = run.indexed
        if entry is None or self.rows is None:
            return
        if entry.shard.row(entry.raw[7]) != row:
            entry.raw[7] = row
            entry.shard.dirty = True

    def save(self) -> None:
        """Write the shards that changed (atomically; silently not at all where we may not write)."""
        dirty = [s for s in self._shards if s.dirty]
        if not dirty:
            return
        try:
            self._dir.mkdir(exist_ok=True)
        except OSError:
            return  # a read-only tree: served without an index, as before it existed
        for shard in dirty:
            try:
                shard.save()
                shard.dirty = False
            except OSError:
                pass  # a full disk, a shard we may not replace: the others are still written


def scan(root: ResultsRoot | Path | str, rows: Optional[str] = None) -> Scan:
    """List the tree with the index; see `Scan`. `rows`: the caller's row version (`code_version`)."""
    return Scan(root if isinstance(root, ResultsRoot) else ResultsRoot(root), rows)
