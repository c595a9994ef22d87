"""The run index: what `orch status` and `orch monitor` need to know about finished runs, kept.

Why: most runs of a big tree are finished and never change again, yet a plain scan reads every
run.json (and status every heartbeat, metrics tail and, for an undiagnosed failure, log tails)
on every call and every cron pass. With the index, a call costs one directory listing plus one
`stat` of run.json per run, and reads only the runs that are active or changed.

What: `results/.index/runs-NN.idx`, 16 shards by a hash of `name/run_id` (a change rewrites a
sixteenth of it). One entry per finished (terminal) run: the stat of its run.json taken *before*
the record was read (inode, size, mtime_ns, ctime_ns), its state, current attempt and monitor
marker, and an opaque row its caller may attach, tagged with a version of the code that made it
(rows of another version are ignored): a small JSON value plus a text of one line (`orch status`
keeps its summary's JSON there, written out again as it is). A shard is one line of JSON (the
format, the row version and the entries) followed by one line per entry with its row's text (empty
without one), so the texts are read without being parsed.

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

import gc
import hashlib
import json
import os
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from orchestrator.record.atomicio import atomic_write_bytes
from orchestrator.record.paths import RunPaths
from orchestrator.record.record import attempt_n
from orchestrator.record.states import State
from orchestrator.record.tree import Damaged, ResultsRoot, Run, examine

INDEX_DIR = ".index"
SHARDS = 16
FORMAT = 3  # 3: a JSON header line, then the rows' texts one per line
SETTLE = 1.0  # seconds: a run.json changed more recently than this is not indexed yet
_KEY = 4  # an entry: [ino, size, mtime_ns, ctime_ns, state, attempt, monitor marker, row value, row text]


class IndexEntry:
    """What the index knows about one finished run, valid as of the scan that made it (its run.json's
    stat was unchanged, or the record was just read): state, attempt and the monitor's marker."""

    __slots__ = ("raw", "shard")

    def __init__(self, raw: list[Any], shard: "_Shard") -> None:
        self.raw = raw  # [ino, size, mtime_ns, ctime_ns, state, attempt, marker, row value, row text], as stored
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


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: a scan of 100,000 runs makes a million small acyclic objects
    (decoded shards, runs, rows), and each collection the allocations trigger walks all of them again
    (about a sixth of `orch status --json` over 10,000 runs). Collection resumes, as it was, after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def index_dir(root: Path | str) -> Path:
    return Path(root) / INDEX_DIR


@dataclass
class _Shard:
    path: Path
    rows: Optional[str] = None  # the version tag of the rows it holds
    entries: dict[str, list[Any]] = field(default_factory=dict)
    kept: dict[str, list[Any]] = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def load(cls, path: Path) -> "_Shard":
        try:
            with open(path, "rb") as fh:
                head, _, rest = fh.read().partition(b"\n")
            data = json.loads(head)
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
                raise ValueError("not an index shard")
            entries: dict[str, Any] = data["entries"]
            texts = rest.decode("utf-8").split("\n")
            if len(texts) != len(entries) + 1 or texts[-1]:  # a line per entry, each ended: else torn
                raise ValueError("not an index shard")
            for e, text in zip(entries.values(), texts):
                if type(e) is list and len(e) == 8:
                    e.append(text or None)
        except (OSError, ValueError):  # missing, unreadable, torn or foreign: rebuilt from the run folders
            return cls(path, dirty=path.exists())
        rows = data.get("rows")
        return cls(path, rows if isinstance(rows, str) else None, entries)

    def save(self) -> None:
        head = {"format": FORMAT, "rows": self.rows, "entries": {rel: e[:8] for rel, e in self.kept.items()}}
        lines = [json.dumps(head, separators=(",", ":"), default=str)] + [e[8] or "" for e in self.kept.values()]
        atomic_write_bytes(self.path, ("\n".join(lines) + "\n").encode("utf-8"),
                           fsync=False)  # a cache: a shard lost in a power cut is rebuilt


def read_shard(path: Path | str) -> Optional[dict[str, Any]]:
    """A shard's header (`format`, `rows`, `entries`; each entry with its row's text last, None without
    one), or None for a shard that is missing or not one this code writes (for tools and tests)."""
    shard = _Shard.load(Path(path))
    if not shard.entries and shard.dirty:
        return None
    return {"format": FORMAT, "rows": shard.rows, "entries": shard.entries}


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
        with paused_gc():
            self._shards = [_Shard.load(self._dir / f"runs-{i:02d}.idx") for i in range(SHARDS)]
        if rows is not None:
            for shard in self._shards:
                if shard.rows != rows:  # rows of other code: ignore them, replace them as they are made
                    shard.rows = rows
                    shard.dirty = shard.dirty or any(e[7] is not None or e[8] is not None for e in shard.entries.values()
                                                     if isinstance(e, list) and len(e) == 9)
                    for e in shard.entries.values():
                        if isinstance(e, list) and len(e) == 9:
                            e[7] = e[8] = None
        with paused_gc():
            self._scan()

    def _scan(self) -> None:
        settled = time.time_ns() - int(SETTLE * 1e9)
        shards, stat, crc32 = self._shards, os.stat, zlib.crc32
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
                # One loop per run folder, written out: it runs 100,000 times per `orch status`.
                for entry in entries:
                    name = entry.name
                    rel = group + "/" + name
                    # The stat comes first: a run.json that changes after it fails the next call's comparison.
                    try:
                        st = stat(name + "/run.json", dir_fd=gfd) if gfd is not None else \
                            stat(os.path.join(entry.path, "run.json"))
                        key: Optional[list[int]] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
                    except (OSError, ValueError):
                        key = None
                    shard = shards[crc32(rel.encode("utf-8", "surrogateescape")) % SHARDS]
                    old = shard.entries.get(rel)
                    if (type(old) is list and len(old) == 9 and old[:_KEY] == key and old[4] in _TERMINAL
                            and type(old[5]) is int):
                        run = Run(RunPaths(entry.path, name))
                        run.indexed = IndexEntry(old, shard)
                        shard.kept[rel] = old
                        self.runs.append(run)
                    else:
                        self._read(group, entry, rel, key, shard, settled)
            finally:
                if gfd is not None:
                    os.close(gfd)
        for shard in self._shards:
            if len(shard.kept) != len(shard.entries):
                shard.dirty = True  # entries of runs gone, changed or unlisted

    def _read(self, group: str, entry: os.DirEntry[str], rel: str, key: Optional[list[int]], shard: _Shard,
              settled: int) -> None:
        """A run folder the index could not answer for: examined; indexed when finished and settled."""
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
            raw = key + [state.value, attempt_n(found.record), marker if isinstance(marker, dict) and marker else None,
                         None, None]
            shard.kept[rel] = raw
            shard.dirty = True
            found.indexed = IndexEntry(raw, shard)

    def row(self, run: Run) -> Optional[tuple[Any, str]]:
        """The row kept for this finished run by a caller of the same row version, as stored (not to be
        changed in place): (its JSON value, its text), or None."""
        entry = run.indexed
        if entry is None or self.rows is None:
            return None
        raw = entry.raw
        return None if raw[8] is None else (raw[7], raw[8])

    def keep_row(self, run: Run, value: Any, text: str) -> None:
        """Attach a row to this run's entry (ignored for a run that is not indexed: active, damaged,
        changed just now). The row must be made from what was read after this scan's stat."""
        entry = run.indexed
        if entry is None or self.rows is None:
            return
        if "\n" in text:
            raise ValueError("an index row's text is one line")
        raw = entry.raw
        if raw[7] != value or raw[8] != text:
            raw[7], raw[8] = value, text
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
        for old in self._dir.glob("runs-*.json"):  # shards of format 1 and 2 (one JSON document each)
            try:
                old.unlink()
            except OSError:
                pass
        for shard in dirty:
            try:
                shard.save()
                shard.dirty = False
            except OSError:
                pass  # a full disk, a shard we may not replace: the others are still written


def scan(root: ResultsRoot | Path | str, rows: Optional[str] = None) -> Scan:
    """List the tree with the index; see `Scan`. `rows`: the caller's row version (`code_version`)."""
    return Scan(root if isinstance(root, ResultsRoot) else ResultsRoot(root), rows)
