"""Copy a run into a verified preserved-data bundle: `<dest>/<YYYY-MM-DD>_<name>/`.

Why: run folders get wiped and hand copies cannot be trusted. A bundle is laid out like the run
folder, carries a generated README with plots, and a `MANIFEST.sha256` computed while copying
(one read per file). It is built in a hidden temporary folder and renamed into place only when
complete, so a killed preserve never leaves a bundle that looks whole. Preserving an unchanged
run again is a no-op (the planned manifest equals the existing one); a changed run needs
--force. Symlinks leaving the run folder are never followed, and secrets are never copied:
credential files (`.env`, `id_rsa`, ...) are skipped, and every text file (spec.yaml, job.sh,
logs, JSON, checkpoint spec copies), the generated README and PRESERVED.json go through
`orchestrator.secrets` (large ones streamed line by line), so the bundle and its archive hold
the masked text only.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Union

from orchestrator.record.atomicio import file_lock, read_json, replace_dir
from orchestrator.record.checkpoints import POLICIES, restate_file, select
from orchestrator.errors import OrchError, UserError
from orchestrator.preserve.manifest import (MANIFEST_NAME, copy_hashed, diff_manifests, hash_bytes, hash_file, iter_lines,
                       read_manifest, render_manifest, walk_files)
from orchestrator.record.paths import check_name, inside
from orchestrator.record.tree import Run
from orchestrator.analysis.rundata import BUNDLE_META, RunData
from orchestrator.secrets import is_secret_file, is_text_file, redact, redact_file, redact_mapping, redact_stream

ARCHIVES = ("tar", "tar.gz", "tar.zst")
# Run-time files that describe a live process, not a result.
RUNTIME = {"heartbeat.json"}
# Text files up to this size are redacted in memory (YAML/JSON structurally); larger ones are
# streamed through the line redactor while copying (checkpoint files are always read whole, so
# a checkpoint manifest's sizes can be corrected).
_SANITIZE_MAX = 16 * 1024 * 1024
# Tokenizer data written by training, not by a person: never rewritten (a long vocabulary entry
# must not be mistaken for a key).
_MODEL_DATA = {"tokenizer.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "tokenizer.model"}


@dataclass
class Item:
    """One file of the bundle: streamed from `src`, or generated/sanitized `data`."""

    rel: str
    src: Path | None = None
    data: bytes | None = None
    link: bool = False  # a checkpoint file: reflink (or, with --link, a hard link) allowed
    stream_redact: bool = False  # a large text file: copied through the line redactor

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        try:
            return self.src.stat().st_size if self.src else 0
        except OSError:
            return 0

    def digest(self) -> str:
        if self.data is not None:
            return hash_bytes(self.data)
        if self.stream_redact:
            h = hashlib.sha256()
            for chunk in redact_stream(self.src):  # type: ignore[arg-type]
                h.update(chunk)
            return h.hexdigest()
        return hash_file(self.src)  # type: ignore[arg-type]


@dataclass
class Plan:
    """What a bundle of one run will contain, decided before anything is written."""

    data: RunData
    name: str
    items: list[Item] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class PreserveResult:
    """What `preserve` did (not to be confused with a trainer's `Outcome`)."""

    path: Path
    status: str  # created | unchanged | replaced
    files: int = 0
    bytes: int = 0
    linked: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ secrets
def _sanitize(src: Path, rel: str, *, whole: bool = False) -> tuple[bytes | None, bool]:
    """(redacted bytes, stream) of a text file: bytes when a small file (or, with `whole`, any)
    held a secret, stream when a large one must be copied through the line redactor; else
    (None, False)."""
    if not is_text_file(rel) or Path(rel).name in _MODEL_DATA:
        return None, False
    try:
        if not whole and src.stat().st_size > _SANITIZE_MAX:
            with open(src, "rb") as fh:
                return None, b"\0" not in fh.read(8192)  # binary: copied as it is
        return redact_file(rel, src.read_bytes()), False
    except OSError:
        return None, False


# ------------------------------------------------------------------------------ planning
def bundle_date(d: RunData) -> str:
    """The run's creation date (stable, so re-preserving later finds the same bundle)."""
    created = str(d.record.get("created_at") or "")
    if re.match(r"^\d{4}-\d{2}-\d{2}", created):
        return created[:10]
    m = re.search(r"-(\d{4})(\d{2})(\d{2})-\d{6}-", d.run_id)
    if m:
        return "-".join(m.groups())
    try:
        return time.strftime("%Y-%m-%d", time.localtime(d.paths.run_json.stat().st_mtime))
    except OSError:
        return time.strftime("%Y-%m-%d")


def _collect(root: Path, sub: str, plan: Plan, *, link: bool = False, top: bool = False) -> None:
    """Add the files under root/sub (or root itself) to the plan, refusing secrets and escapes."""
    base = root / sub if sub else root
    if base.is_symlink() or not base.is_dir():
        if base.is_symlink():
            plan.skipped.append(f"{sub}/ (symlink)")
        return
    for rel, entry in sorted(walk_files(base), key=lambda t: t[0]):
        full_rel = f"{sub}/{rel}" if sub else rel
        parts = full_rel.split("/")
        if any(p.startswith(".") for p in parts):
            if is_secret_file(parts[-1]):
                plan.skipped.append(f"{full_rel} (secret)")
            continue  # hidden: locks, temp files, markers of live processes
        if top and len(parts) > 1 and parts[0] in ("ckpt",):
            continue  # checkpoints are chosen by policy
        if top and full_rel in RUNTIME:
            continue
        if any(is_secret_file(p) for p in parts):
            plan.skipped.append(f"{full_rel} (secret)")
            continue
        src = Path(entry.path)
        if entry.is_symlink():
            target = src.resolve()
            if not inside(root, target):
                plan.skipped.append(f"{full_rel} (symlink leaving the run folder)")
                continue
            if not target.is_file():
                continue  # a link to a folder inside the run: skipped (the folder is collected where it lies, if chosen)
            src = target
        elif not entry.is_file(follow_symlinks=False):
            plan.skipped.append(f"{full_rel} (not a regular file)")
            continue
        data, stream = _sanitize(src, full_rel, whole=link)
        if data is not None:
            plan.notes.append(f"{full_rel}: secret-looking values redacted")
        plan.items.append(Item(full_rel, src=src, data=data, link=link and data is None, stream_redact=stream))


def plan_bundle(d: RunData, checkpoints: str = "best") -> Plan:
    """Decide every file of the bundle of `d` (copied files, then README, plots, metadata)."""
    if checkpoints not in POLICIES:
        raise UserError(f"--checkpoints {checkpoints!r}: use one of {', '.join(POLICIES)}")
    root = d.root
    name = f"{bundle_date(d)}_{d.name}"
    check_name(name, "bundle name")
    plan = Plan(d, name)
    _collect(root, "", plan, top=True)
    conf = d.spec.get("checkpoint") if isinstance(d.spec.get("checkpoint"), dict) else {}
    sel = select(d.paths.ckpt, checkpoints, metric=str(conf.get("metric") or "val_loss"),
                 mode="max" if conf.get("mode") == "max" else "min")
    plan.notes += sel.notes
    plan.roles = sel.roles
    for folder in sel.folders:
        _collect(root, f"ckpt/{folder}", plan, link=True)
    _fix_checkpoint_manifests(plan)
    _generate(plan, checkpoints)
    return plan


def _fix_checkpoint_manifests(plan: Plan) -> None:
    """A checkpoint's manifest.json lists file sizes and hashes; keep it true for files we redacted."""
    by_rel = {i.rel: i for i in plan.items}
    for item in plan.items:
        if item.data is None or not item.rel.startswith("ckpt/") or item.rel.count("/") < 2:
            continue
        folder, _, inner = item.rel[len("ckpt/"):].partition("/")
        man = by_rel.get(f"ckpt/{folder}/manifest.json")
        if man is None or man is item:
            continue
        try:
            obj = json.loads(man.data if man.data is not None else man.src.read_bytes())  # type: ignore[union-attr]
        except (OSError, ValueError):
            continue
        if restate_file(obj, inner, item.data):
            man.data, man.link = (json.dumps(obj, indent=2) + "\n").encode(), False


def _generate(plan: Plan, checkpoints: str) -> None:
    """Plots, PRESERVED.json and README.md, all deterministic functions of the run's files."""
    from orchestrator.analysis.plotting import length_generalization, training_curves
    from orchestrator.preserve.readme import render_readme

    d = plan.data
    taken = {i.rel for i in plan.items}
    plots: list[str] = []
    for rel, make in (("plots/training_curves.png", lambda: training_curves(d)),
                      ("plots/length_generalization.png", lambda: length_generalization(d, "last"))):
        if rel in taken:
            continue
        png = make()
        if png:
            plan.items.append(Item(rel, data=png))
            plots.append(rel)
    meta = {"format": 1, "generator": "orch preserve", "run_id": d.run_id, "name": d.name,
            "state": d.state, "source": str(d.root.resolve()), "checkpoints": checkpoints,
            "checkpoint_roles": plan.roles, "skipped": sorted(plan.skipped)}
    meta = redact_mapping(meta)
    plan.items.append(Item(BUNDLE_META, data=(json.dumps(meta, indent=2) + "\n").encode()))
    files = {i.rel: i.size for i in plan.items}
    readme = redact(render_readme(d, checkpoints=checkpoints, roles=plan.roles, plots=plots, files=files,
                                  skipped=sorted(plan.skipped)))
    if "README.md" in taken:  # the run wrote its own README: keep it, add ours beside it
        plan.items.append(Item("README.orch.md", data=readme.encode()))
    else:
        plan.items.append(Item("README.md", data=readme.encode()))


def planned_manifest(plan: Plan) -> dict[str, str]:
    """Hash every source once without writing (used to detect a no-op re-preserve)."""
    return {i.rel: i.digest() for i in plan.items}


# ------------------------------------------------------------------------------ building
def _write_new(dst: Path, data: bytes) -> str:
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return hash_bytes(data)


def _write_stream(dst: Path, chunks: Iterable[bytes]) -> str:
    """Write `chunks` to a new file (as `_write_new` does), hashing them; the sha256."""
    h = hashlib.sha256()
    with os.fdopen(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as fh:
        for chunk in chunks:
            h.update(chunk)
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def build(plan: Plan, tmp: Path, *, link: str) -> tuple[dict[str, str], int]:
    """Write every item under `tmp` (hash while copying), MANIFEST.sha256 last; (manifest, linked).
    `link` (manifest.LINK_MODES) applies to checkpoint files; every other file is copied."""
    manifest: dict[str, str] = {}
    linked = 0
    dirs = {tmp}
    for item in plan.items:
        dst = tmp / item.rel
        if dst.parent not in dirs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dirs.update([dst.parent, *dst.parent.parents])
        if item.data is not None:
            manifest[item.rel] = _write_new(dst, item.data)
        elif item.stream_redact:
            manifest[item.rel] = _write_stream(dst, redact_stream(item.src))  # type: ignore[arg-type]
        else:
            assert item.src is not None
            digest, how = copy_hashed(item.src, dst, link=link if item.link else "copy")
            manifest[item.rel] = digest
            linked += how != "copy"
    for d in sorted((x for x in dirs if inside(tmp, x)), key=lambda p: len(p.parts), reverse=True):
        _fsync_dir(d)
    _write_new(tmp / MANIFEST_NAME, render_manifest(manifest).encode())
    _fsync_dir(tmp)
    return manifest, linked


def _existing_run_id(path: Path) -> str | None:
    if path.is_dir():
        meta = read_json(path / BUNDLE_META, default={})
        return meta.get("run_id") if isinstance(meta, dict) else None
    from orchestrator.preserve.archive import read_archive_member

    raw = read_archive_member(path, BUNDLE_META)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return None
    return meta.get("run_id") if isinstance(meta, dict) else None


def choose_target(dest: Path, plan: Plan, ext: str) -> Path:
    """`<date>_<name>`, or with the run id's suffix when that name holds another run's bundle."""
    rid = plan.data.run_id
    short = rid.rsplit("-", 1)[-1]
    for cand in (plan.name, f"{plan.name}_{short}", f"{plan.name}_{rid}"):
        check_name(cand, "bundle name")
        p = dest / (cand + ext)
        if not os.path.lexists(p):
            return p
        if _existing_run_id(p) == rid:
            return p
    raise UserError(f"{dest}: every bundle name for run {rid} is taken by other bundles or folders",
                    hint="pass --dest DIR to preserve elsewhere")


_STALE = re.compile(r"^\.(tmp|old)-(.+)\+(.+)\+(\d+)\+([0-9a-f]{6})(\.tar(\.gz|\.zst)?)?$")


def _scratch(dest: Path, kind: str, name: str) -> Path:
    """A hidden sibling `.<kind>-<name>+<host>+<pid>+<rand>`, recognisable by _cleanup_stale."""
    return dest / f".{kind}-{name}+{socket.gethostname()}+{os.getpid()}+{os.urandom(3).hex()}"


def _cleanup_stale(dest: Path) -> None:
    """Tidy after preserves on this host that were killed: drop half-built bundles, and put
    back a bundle that was moved aside for --force when its replacement never arrived."""
    host = socket.gethostname()
    for entry in os.scandir(dest):
        m = _STALE.match(entry.name)
        if not m or m.group(3) != host:
            continue
        try:
            os.kill(int(m.group(4)), 0)
            continue  # that preserve is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if m.group(1) == "old":
            original = dest / m.group(2)
            if not os.path.lexists(original):
                with contextlib.suppress(OSError):
                    os.rename(entry.path, original)
                continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _read_existing(target: Path) -> dict[str, str] | None:
    if target.is_dir():
        try:
            return read_manifest(target)
        except UserError:
            return None
    from orchestrator.preserve.archive import read_archive_member
    from orchestrator.preserve.manifest import parse_manifest

    raw = read_archive_member(target, MANIFEST_NAME)
    if raw is None:
        return None
    try:
        return parse_manifest(raw.decode("utf-8"), str(target))
    except (UserError, UnicodeDecodeError):
        return None


def _looks_intact(target: Path, manifest: dict[str, str]) -> bool:
    """A cheap presence check of an existing folder bundle (full check: `orch verify`)."""
    if not target.is_dir():
        return True
    return all((target / rel).is_file() and not (target / rel).is_symlink() for rel in manifest)


RunLike = Union[Run, RunData, Path, str]


def _as_data(run: RunLike) -> RunData:
    if isinstance(run, RunData):
        return run
    root = run.paths.root if isinstance(run, Run) else Path(run)
    if not (root / "run.json").is_file() and not (root / "spec.yaml").is_file():
        raise UserError(f"{root} is not a run folder (no run.json)")
    return RunData(root, "run")


def preserve(run: RunLike, dest: Path | str, *, checkpoints: str = "best", archive: str | None = None,
             force: bool = False, copy: bool = False, link: bool = False,
             log: Callable[[str], None] | None = None) -> PreserveResult:
    """Preserve one run into `dest`; see the module docstring for the guarantees.

    Checkpoints are reflinked where the filesystem can (an independent copy-on-write copy), else
    copied; `copy` always copies byte by byte; `link` also allows hard links, which share the run's
    files (an in-place change to the run's file then changes the bundle): only on request."""
    if copy and link:
        raise UserError("--copy and --link exclude each other")
    mode = "copy" if copy else "hardlink" if link else "reflink"
    try:
        return _preserve(run, dest, checkpoints=checkpoints, archive=archive, force=force, link_mode=mode, log=log)
    except OSError as exc:  # disk full, permissions, a file vanishing mid-copy: no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        raise OrchError(f"preserve failed: {exc.strerror or exc}{where}; no bundle was written or changed",
                        hint="fix the cause and run it again (half-built bundles are cleaned up)") from None


def _preserve(run: RunLike, dest: Path | str, *, checkpoints: str, archive: str | None, force: bool,
              link_mode: str, log: Callable[[str], None] | None) -> PreserveResult:
    say = log or (lambda s: None)
    d = _as_data(run)
    if archive is not None and archive not in ARCHIVES:
        raise UserError(f"--archive {archive!r}: use one of {', '.join(ARCHIVES)}")
    dest = Path(dest)
    if inside(d.root, dest):
        raise UserError(f"--dest {dest} is inside the run folder {d.root}")
    if d.state in ("RUNNING", "QUEUED", "PENDING", "STALLED"):
        say(f"warning: {d.run_id} is {d.state}; the bundle is a snapshot of its files now")
    started = time.monotonic()
    plan = plan_bundle(d, checkpoints)
    dest.mkdir(parents=True, exist_ok=True)
    ext = f".{archive}" if archive else ""
    with file_lock(dest / f".lock-{plan.name}"):
        _cleanup_stale(dest)
        target = choose_target(dest, plan, ext)
        status = "created"
        if os.path.lexists(target):
            existing = _read_existing(target)
            if existing is not None:
                new = planned_manifest(plan)
                if new == existing and _looks_intact(target, existing):
                    return PreserveResult(target, "unchanged", len(new), sum(i.size for i in plan.items),
                                   seconds=time.monotonic() - started, notes=plan.notes)
                if not force:
                    changes = diff_manifests(existing, new) or ["files are missing from the existing bundle"]
                    raise UserError(
                        f"{target} already holds a different bundle of {d.run_id}:\n  "
                        + "\n  ".join(iter_lines(changes, 10)),
                        hint="pass --force to replace it (or --dest DIR to keep both)")
            elif not force:
                raise UserError(f"{target} exists and is not a complete bundle",
                                hint="pass --force to replace it")
            status = "replaced"
        tmp = _scratch(dest, "tmp", target.name.removesuffix(ext))
        tmp.mkdir()
        try:
            manifest, linked = build(plan, tmp, link=link_mode)
            final_tmp = tmp
            if archive:
                from orchestrator.preserve.archive import write_archive

                final_tmp = Path(f"{tmp}{ext}")
                write_archive(tmp, final_tmp, archive, arcname=target.name.removesuffix(ext))
            _swap_into_place(final_tmp, target)
        finally:
            for leftover in (tmp, Path(f"{tmp}{ext}")):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                elif archive and leftover.exists():
                    leftover.unlink()
    return PreserveResult(target, status, len(manifest), sum(i.size for i in plan.items), linked,
                   time.monotonic() - started, plan.notes)


def _swap_into_place(new: Path, target: Path) -> None:
    """Rename the finished bundle into place; an old one is moved aside first, then removed."""
    replace_dir(new, target, _scratch(target.parent, "old", target.name), sync=_fsync_dir)


def preserve_run(run: RunLike, dest: Path | str, checkpoints: str = "best", *, archive: str | None = None,
                 force: bool = False, copy: bool = False, link: bool = False) -> Path:
    """The bundle path of `run` under `dest` (for `orch monitor`'s preserve.auto)."""
    return preserve(run, dest, checkpoints=checkpoints, archive=archive, force=force, copy=copy, link=link,
                    log=lambda s: print(s, file=sys.stderr)).path
