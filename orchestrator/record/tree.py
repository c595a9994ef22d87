"""The results tree: creating runs, finding them, and updating their `run.json` safely.

`results/<name>/<run_id>/` holds one run. `run.json` is the run's record: state, attempts (with
backend job ids), timestamps, host, exit codes, stop reason, failure class; its one writer is
`orchestrator.record.record` (typed, named transitions under the run's lock). This module makes
run folders and finds them, including the ones it cannot use: a folder whose run.json is missing,
unreadable, not JSON or not a run record is a `Damaged` entry (path + what is wrong) that every
command reports, never a run that silently disappears from the listing.
"""
from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from orchestrator.record.atomicio import atomic_write_json, read_json
from orchestrator.record.record import RunRecord, create, read_json_strict
from orchestrator.errors import RecordDamaged, RunNotFound, UserError
from orchestrator.record.paths import RunPaths, check_name, inside
from orchestrator.record.states import State


def new_run_id(name: str, when: float | None = None) -> str:
    """Readable and unique: `<name>-<YYYYmmdd-HHMMSS>-<4 hex>`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when or time.time()))
    import secrets  # here: its imports (random, hashlib) cost `orch status` 7 ms

    return f"{name}-{stamp}-{secrets.token_hex(2)}"


@dataclass
class Run:
    """A run folder plus its record (read lazily, cached)."""

    paths: RunPaths
    _record: dict[str, Any] | None = None
    # Set by the run index (`orchestrator.record.index.scan`) on a finished run: its IndexEntry
    # (state, attempt, monitor marker as of that scan). A run answered by the index has no record
    # until asked for (read lazily, from disk).
    indexed: Any = None

    @property
    def run_id(self) -> str:
        return self.paths.run_id

    @property
    def group(self) -> str:
        """The experiment name of the folder (the folder above the run)."""
        return self.paths.group

    @property
    def record(self) -> dict[str, Any]:
        if self._record is None:
            self._record = read_json(self.paths.fast("run_json"), default={}) or {}
        return self._record

    def reload(self) -> dict[str, Any]:
        self._record = None
        return self.record

    @property
    def name(self) -> str:
        return self.record.get("name") or self.paths.group

    @property
    def state(self) -> State:
        try:
            return State(self.record.get("state", "PENDING"))
        except ValueError:
            return State.FAILED

    @property
    def attempts(self) -> list[dict[str, Any]]:
        return self.record.setdefault("attempts", [])

    def annotate(self, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Change run.json keys other than the state under the run's lock (see record.annotate);
        state changes go through the named transitions of `orchestrator.record.record`."""
        from orchestrator.record.record import annotate

        return annotate(self, mutate)


# A folder with no run.json yet is a run being created (create_run writes run.json last) for this long.
CREATING_GRACE = 60.0


@dataclass(frozen=True)
class Damaged:
    """A folder of the results tree that should hold a run (or runs) but cannot be used, and why."""

    path: Path
    problem: str
    group: str  # the experiment name (the folder above a run, or the unreadable name folder itself)
    run_id: Optional[str] = None  # None when a whole name folder cannot be listed

    @property
    def label(self) -> str:
        return self.run_id or f"{self.group}/"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    def error(self) -> RecordDamaged:
        return RecordDamaged(f"{'run ' + self.run_id if self.run_id else 'folder'} is damaged: {self}",
                             hint="repair or move the folder; other runs are not affected")


Entry = Union[Run, Damaged]


def _why_unreadable(path: str, exc: OSError, what: str = "folder") -> str:
    """'Permission denied (folder mode 000, owner uid 1000)'."""
    why = exc.strerror or str(exc)
    try:
        st = os.stat(path)
        why += f" ({what} mode {stat.S_IMODE(st.st_mode):03o}, owner uid {st.st_uid})"
    except OSError:
        pass
    return why


def examine(path: str, group: str, *, grace: bool = False) -> Optional[Entry]:
    """The run in folder `path`, or a Damaged entry saying what is wrong with it. With `grace`, a
    folder without run.json younger than CREATING_GRACE is a run being created: None."""
    where = os.path.join(path, "run.json")
    try:
        raw = read_json_strict(where, where="run.json")
        RunRecord.from_dict(raw, where="run.json")
    except RecordDamaged as exc:  # the cheap checks below run only for a damaged folder
        problem = exc.message
        denied = PermissionError(13, os.strerror(13))
        if not os.access(path, os.R_OK | os.X_OK):
            problem = f"cannot read the run folder: {_why_unreadable(path, denied)}"
        elif not os.path.exists(where):
            if grace and _younger_than(path, CREATING_GRACE):
                return None
            problem = "no run.json (not a run, or its creation was interrupted)"
        elif os.path.isfile(where) and not os.access(where, os.R_OK):
            problem = f"cannot read run.json: {_why_unreadable(where, denied, 'file')}"
        return Damaged(Path(path), problem, group, os.path.basename(path))
    return Run(RunPaths(path), raw)


def _younger_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime < seconds
    except OSError:
        return False


def check_ref(ref: str, whole: Optional[str] = None) -> str:
    """A run reference must say something: `orch cancel ''` (an unset "$RUN" in a script) must not
    match every run as the empty prefix of all ids."""
    if not ref or not ref.strip() or ref != ref.strip():
        raise UserError(
            f"{(whole if whole is not None else ref)!r} is not a run id, name or folder",
            hint="an empty or blank reference (an unset shell variable?) matches nothing; "
                 "`orch status` lists runs",
        )
    return ref


class ResultsRoot:
    """The results tree root; finds runs and resolves ids and unique prefixes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def run_paths(self, name: str, run_id: str) -> RunPaths:
        check_name(name)
        check_name(run_id, "run id")
        path = self.root / name / run_id
        if not inside(self.root, path):
            raise UserError(f"run folder {path} would escape the results root {self.root}")
        return RunPaths(path)

    def create_run(self, name: str, record: dict[str, Any], run_id: str | None = None,
                   files: dict[str, str] | None = None) -> Run:
        """Make a new run folder: `files` (spec.yaml, provenance.json, ...), then run.json (PENDING).

        A folder is a run only once its run.json exists, and that is renamed into place last, so
        the other files can be written plainly (one syscall each: sweeps create thousands).
        """
        for _ in range(20):
            rid = run_id or new_run_id(name)
            paths = self.run_paths(name, rid)
            try:
                paths.root.mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                if run_id:
                    raise UserError(f"run {rid} already exists in {self.root}")
        else:  # pragma: no cover - 20 collisions of 16 random bits in one second
            raise UserError("could not allocate a unique run id")
        paths.logs.mkdir()  # the scheduler writes there before the job runs; eval/ and ckpt/ come later
        for rel, text in (files or {}).items():
            with open(paths.root / rel, "x", encoding="utf-8") as fh:
                fh.write(text)
        rec = create(rid, name, **record).to_dict()
        # Atomic (rename) but not fsynced: a 1,000-run sweep would spend seconds in fsync, and a
        # folder whose run.json never landed is simply not listed.
        atomic_write_json(paths.run_json, rec, fsync=False)
        return Run(paths, rec)

    def folders(self) -> Iterator[Union[Damaged, tuple[str, str, list[os.DirEntry[str]]]]]:
        """Each name folder of the tree, sorted: (name, its path, its run folders sorted by name), or
        a Damaged entry for one that cannot be listed. Hidden entries (`.index`, `.monitor.lock`)
        and files (`events.jsonl`) are no runs."""
        try:
            groups = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise UserError(f"cannot read the results root {self.root}: {_why_unreadable(str(self.root), exc)}",
                            hint="pass --results DIR (or set ORCH_RESULTS) to a tree you may read") from None
        for group in groups:
            if group.name.startswith(".") or not group.is_dir():
                continue
            try:
                entries = sorted(os.scandir(group.path), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                yield Damaged(Path(group.path), f"cannot list the folder: {_why_unreadable(group.path, exc)}",
                              group.name)
                continue
            yield group.name, group.path, [e for e in entries if not e.name.startswith(".") and e.is_dir()]

    def entries(self) -> Iterator[Entry]:
        """Every run folder (two levels: name/run_id), sorted, as a Run or a Damaged entry.

        A folder without run.json younger than CREATING_GRACE is a run being created: not listed.
        """
        for folder in self.folders():
            if isinstance(folder, Damaged):
                yield folder
                continue
            group, _, runs = folder
            for entry in runs:
                found = examine(entry.path, group, grace=True)
                if found is not None:
                    yield found

    def scan(self) -> tuple[list[Run], list[Damaged]]:
        """(runs, damaged folders) of the whole tree, each sorted by name then run id."""
        runs: list[Run] = []
        damaged: list[Damaged] = []
        for e in self.entries():
            (runs if isinstance(e, Run) else damaged).append(e)  # type: ignore[arg-type]
        return runs, damaged

    def iter_runs(self) -> Iterator[Run]:
        """Every usable run (damaged folders are left out: `scan()` or `entries()` report them)."""
        for e in self.entries():
            if isinstance(e, Run):
                yield e

    def resolve(self, ref: str) -> Run:
        """A run from its id, a unique prefix or suffix of it, `name/run_id`, a run folder path, or an
        experiment name (its newest run: `orch logs quickstart`). A ref that names a damaged folder
        raises RecordDamaged (exit 1) saying what is wrong with it."""
        found = self._resolve(ref)
        if isinstance(found, Damaged):
            raise found.error()
        return found

    def _resolve(self, ref: str) -> Entry:
        check_ref(ref)
        as_path = Path(ref)
        if (as_path / "run.json").exists() or (as_path.is_dir() and self._is_run_folder(as_path)):
            return examine(str(as_path), as_path.resolve().parent.name)  # type: ignore[return-value]
        if "/" in ref:
            name, _, rid = ref.partition("/")
            ref = check_ref(rid, whole=ref)
        everything = list(self.entries())
        matches = [e for e in everything if e.run_id is not None and e.run_id.startswith(ref)]
        if not matches and ref:  # the short id `orch status` shows: a unique suffix
            matches = [e for e in everything if e.run_id is not None and e.run_id.endswith(ref)]
        exact = [e for e in matches if e.run_id == ref]
        if exact:
            return exact[0]
        if len(matches) == 1:
            return matches[0]
        named = [e for e in matches if e.group == ref]
        if named and len(named) == len(matches):  # the newest run of that name
            healthy = [r for r in named if isinstance(r, Run)]
            if healthy:
                return max(healthy, key=lambda r: (r.record.get("created_ns", 0), r.run_id))
            return named[-1]
        if not matches:
            group = [e for e in everything if e.run_id is None and e.group == ref]
            if group:
                return group[0]
            raise RunNotFound(
                f"no run matches {ref!r} in {self.root}",
                hint="`orch status` lists runs; pass --results DIR if they live elsewhere",
            )
        shown = ", ".join(str(r.run_id) for r in matches[:5])
        raise RunNotFound(f"{ref!r} matches {len(matches)} runs ({shown}...)", hint="give a longer prefix")

    def _is_run_folder(self, path: Path) -> bool:
        """A folder two levels below the results root (name/run_id), whatever is (not) inside it."""
        try:
            return path.resolve().parent.parent == self.root.resolve()
        except OSError:
            return False

    def resolve_many(self, refs: list[str], damaged: Optional[list[Damaged]] = None) -> list[Run]:
        """Resolve refs; a ref that is a run *name* expands to all runs of that name.

        Damaged folders among a name's runs are left out (appended to `damaged` when given, so the
        caller can warn). A ref that names a damaged run raises RecordDamaged, unless `damaged` is
        given: then it is appended there too and the caller decides.
        """
        out: list[Run] = []
        for ref in refs:
            check_ref(ref)
            group = self.root / ref
            if "/" not in ref and group.is_dir() and not (group / "run.json").exists():
                entries = [e for e in self.entries() if e.group == ref]
                runs = [e for e in entries if isinstance(e, Run)]
                if runs:
                    out.extend(runs)
                    if damaged is not None:
                        damaged.extend(e for e in entries if isinstance(e, Damaged))
                    continue
            found = self._resolve(ref)
            if isinstance(found, Damaged):
                if damaged is None:
                    raise found.error()
                damaged.append(found)
                continue
            out.append(found)
        return out

