"""The results tree: creating runs, finding them, and updating their `run.json` safely.

`results/<name>/<run_id>/` holds one run. `run.json` is the run's record: state, attempts (with
backend job ids), timestamps, host, exit codes, stop reason, failure class; its one writer is
`orchestrator.record.record` (typed, named transitions under the run's lock). This module makes
run folders and finds them.
"""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator.record.atomicio import atomic_write_json, read_json
from orchestrator.record.record import create
from orchestrator.errors import RunNotFound, UserError
from orchestrator.record.paths import RunPaths, check_name, inside
from orchestrator.record.states import State


def new_run_id(name: str, when: float | None = None) -> str:
    """Readable and unique: `<name>-<YYYYmmdd-HHMMSS>-<4 hex>`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when or time.time()))
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


@dataclass
class Run:
    """A run folder plus its record (read lazily, cached)."""

    paths: RunPaths
    _record: dict[str, Any] | None = None

    @property
    def run_id(self) -> str:
        return self.paths.run_id

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

    def iter_runs(self) -> Iterator[Run]:
        """Every run folder (two levels: name/run_id) that holds a run.json."""
        try:
            groups = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for group in groups:
            if not group.is_dir() or group.name.startswith("."):
                continue
            try:
                entries = sorted(os.scandir(group.path), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_dir():
                    run = Run(RunPaths(entry.path))
                    if run.record:  # has a readable run.json
                        yield run

    def resolve(self, ref: str) -> Run:
        """A run from its id, a unique prefix of it, `name/run_id`, a run folder path, or an
        experiment name (its newest run: `orch logs quickstart`)."""
        as_path = Path(ref)
        if (as_path / "run.json").exists():
            return Run(RunPaths(as_path))
        if "/" in ref:
            name, _, rid = ref.partition("/")
            ref = rid
        matches = [r for r in self.iter_runs() if r.run_id.startswith(ref)]
        exact = [r for r in matches if r.run_id == ref]
        if exact:
            return exact[0]
        if len(matches) == 1:
            return matches[0]
        named = [r for r in matches if r.paths.group == ref]
        if named and len(named) == len(matches):  # the newest run of that name
            return max(named, key=lambda r: (r.record.get("created_ns", 0), r.run_id))
        if not matches:
            raise RunNotFound(
                f"no run matches {ref!r} in {self.root}",
                hint="`orch status` lists runs; pass --results DIR if they live elsewhere",
            )
        shown = ", ".join(r.run_id for r in matches[:5])
        raise RunNotFound(f"{ref!r} matches {len(matches)} runs ({shown}...)", hint="give a longer prefix")

    def resolve_many(self, refs: list[str]) -> list[Run]:
        """Resolve refs; a ref that is a run *name* expands to all runs of that name."""
        out: list[Run] = []
        for ref in refs:
            group = self.root / ref
            if "/" not in ref and group.is_dir() and not (group / "run.json").exists():
                runs = [r for r in self.iter_runs() if r.paths.group == ref]
                if runs:
                    out.extend(runs)
                    continue
            out.append(self.resolve(ref))
        return out
