"""Copy a run into a verified preserved-data bundle: `<dest>/<YYYY-MM-DD>_<name>/`.

Why: run folders get wiped and hand copies cannot be trusted. A bundle is a BagIt bag
(preserve.bag): its payload `data/` is laid out like the run folder and carries a generated
README with plots, PRESERVED.json and RO-Crate metadata (preserve.crate); its
`manifest-sha256.txt` is computed while copying (one read per file). It is built in a hidden
temporary folder and renamed into place only when complete, so a killed preserve never leaves a
bundle that looks whole.

Preserving a run again compares the planned payload with the bundle's manifest (a bundle of the
layout before BagIt, `MANIFEST.sha256`, is read too): the same payload is a no-op ("unchanged");
a payload that differs only in the run's annotations is rebuilt in place, atomically
("updated": checks.json, a run.json whose state, attempts and failure are the same -- what
`orch check` and `orch monitor` rewrite -- and the files generated from them); any other change
needs --force. Preserves of one bundle name are serialised by a lock file that is removed
before the lock is released, so no `.lock-*` file outlives a preserve.

Symlinks leaving the run folder are never followed, and secrets are never copied:
credential files (`.env`, `id_rsa`, ...) are skipped, and every text file (spec.yaml, job.sh,
logs, JSON, checkpoint spec copies), the generated README and PRESERVED.json go through
`orchestrator.secrets` (large ones streamed line by line), so the bundle and its archive hold
the masked text only; so do the RO-Crate metadata and bag-info.txt.
"""
from __future__ import annotations

import contextlib
import fcntl
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
from typing import Callable, Iterable, Iterator, Union

from orchestrator.preserve import bag
from orchestrator.record.atomicio import replace_dir
from orchestrator.record.checkpoints import POLICIES, restate_file, select
from orchestrator.errors import OrchError, UserError
from orchestrator.preserve.crate import METADATA as CRATE_METADATA
from orchestrator.preserve.manifest import (MANIFEST_NAME, copy_hashed, diff_manifests, hash_bytes, hash_file, iter_lines,
                                            parse_manifest, walk_files)
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
    generated: bool = False  # made by preserve from the run's files (README, plots, metadata)

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
    status: str  # created | unchanged | updated (annotations only) | replaced (--force)
    files: int = 0
    bytes: int = 0
    linked: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # payload files that differed from the existing bundle


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
    """Plots, PRESERVED.json, README.md and the RO-Crate metadata, all deterministic functions of
    the run's files."""
    from orchestrator.analysis.plotting import length_generalization, training_curves
    from orchestrator.preserve import crate
    from orchestrator.preserve.readme import config_rows, render_readme

    d = plan.data
    if any(i.rel == CRATE_METADATA for i in plan.items):  # the crate describes the bundle: ours wins
        plan.items = [i for i in plan.items if i.rel != CRATE_METADATA]
        plan.skipped.append(f"{CRATE_METADATA} (the run's own; the bundle's RO-Crate metadata replaces it)")
    taken = {i.rel for i in plan.items}
    plots: list[str] = []
    for rel, make in (("plots/training_curves.png", lambda: training_curves(d)),
                      ("plots/length_generalization.png", lambda: length_generalization(d, "last"))):
        if rel in taken:
            continue
        png = make()
        if png:
            plan.items.append(Item(rel, data=png, generated=True))
            plots.append(rel)
    meta = {"format": 2, "layout": "bagit", "generator": "orch preserve", "run_id": d.run_id, "name": d.name,
            "state": d.state, "source": str(d.root.resolve()), "checkpoints": checkpoints,
            "checkpoint_roles": plan.roles, "skipped": sorted(plan.skipped)}
    meta = redact_mapping(meta)
    plan.items.append(Item(BUNDLE_META, data=(json.dumps(meta, indent=2) + "\n").encode(), generated=True))
    files = {i.rel: i.size for i in plan.items}
    readme = redact(render_readme(d, checkpoints=checkpoints, roles=plan.roles, plots=plots, files=files,
                                  skipped=sorted(plan.skipped)))
    # the run wrote its own README: keep it, add ours beside it
    readme_rel = "README.orch.md" if "README.md" in taken else "README.md"
    plan.items.append(Item(readme_rel, data=readme.encode(), generated=True))
    sizes = {i.rel: None if i.stream_redact else i.size for i in plan.items}  # redaction may change a size
    plan.items.append(Item(CRATE_METADATA, generated=True,
                           data=crate.build(d, sizes, plan.roles, spec_rows=config_rows(d.spec))))


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
    """Write the bag of `plan` in `tmp`: every item under `tmp/data/` (hashed while copied), then
    the tag files, the tag manifest last; (payload manifest, files linked). `link`
    (manifest.LINK_MODES) applies to checkpoint files; every other file is copied."""
    manifest: dict[str, str] = {}
    sizes: dict[str, int] = {}
    linked = 0
    payload = tmp / bag.PAYLOAD
    payload.mkdir()
    dirs = {tmp, payload}
    for item in plan.items:
        dst = payload / item.rel
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
        sizes[item.rel] = len(item.data) if item.data is not None else dst.stat().st_size
    for d in sorted((x for x in dirs if inside(tmp, x)), key=lambda p: len(p.parts), reverse=True):
        _fsync_dir(d)
    for name, data in bag.tag_files(manifest, sizes, _bag_info(plan)).items():
        _write_new(tmp / name, data)
    _fsync_dir(tmp)
    return manifest, linked


def _bag_info(plan: Plan) -> list[tuple[str, str]]:
    """bag-info.txt's fields (Payload-Oxum is added by bag.tag_files)."""
    from orchestrator import __version__

    d = plan.data
    git = d.provenance.get("git") if isinstance(d.provenance.get("git"), dict) else {}
    fields = [("Bagging-Date", time.strftime("%Y-%m-%d")),
              ("Bag-Software-Agent", f"orch {__version__} (orch preserve)"),
              ("External-Identifier", d.run_id),
              ("External-Description", f"{d.name}: run {d.run_id} ({d.state}), preserved by orch; "
                                       f"RO-Crate metadata in {bag.PAYLOAD}/{CRATE_METADATA}"),
              ("Internal-Sender-Identifier", str(d.root.resolve())),
              ("Bag-Group-Identifier", d.name)]
    if git.get("commit"):
        fields.append(("Internal-Sender-Description", f"git commit {git['commit']}"))
    return [(k, redact(v)) for k, v in fields]


@dataclass
class Existing:
    """A bundle already at the target path (folder or archive; BagIt or the layout before it),
    as far as preserving the run again needs it. Paths are payload-relative."""

    path: Path
    layout: str  # bagit | legacy | unknown
    manifest: dict[str, str] | None = None  # None: no readable manifest

    @property
    def _prefix(self) -> str:
        return f"{bag.PAYLOAD}/" if self.layout == "bagit" else ""

    def read(self, rel: str) -> bytes | None:
        """One file of the bundle (None when absent or unreadable)."""
        if self.path.is_dir():
            f = self.path / (self._prefix + rel)
            try:
                return f.read_bytes() if f.is_file() and not f.is_symlink() else None
            except OSError:
                return None
        from orchestrator.preserve.archive import read_archive_member

        return read_archive_member(self.path, self._prefix + rel)

    def run_id(self) -> str | None:
        if self.layout == "bagit" and self.path.is_dir():
            info = (self.path / bag.BAG_INFO)
            with contextlib.suppress(OSError, UnicodeDecodeError):
                rid = bag.parse_info(info.read_text(encoding="utf-8")).get("External-Identifier")
                if rid:
                    return rid
        try:
            meta = json.loads(self.read(BUNDLE_META) or b"{}")
        except ValueError:
            return None
        return meta.get("run_id") if isinstance(meta, dict) else None

    def intact(self) -> bool:
        """A cheap presence check of a folder bundle (the full check: `orch verify`)."""
        if not self.path.is_dir() or self.manifest is None:
            return True
        root = self.path / self._prefix if self._prefix else self.path
        return all((root / rel).is_file() and not (root / rel).is_symlink() for rel in self.manifest)


def read_existing(path: Path) -> Existing:
    """What is at `path`: its layout and payload manifest (a damaged one reads as None)."""
    for layout, name in (("bagit", bag.MANIFEST), ("legacy", MANIFEST_NAME)):
        if path.is_dir():
            f = path / name
            try:
                raw = f.read_bytes() if f.is_file() else None
            except OSError:
                raw = None
        else:
            from orchestrator.preserve.archive import read_archive_member

            raw = read_archive_member(path, name)
        if raw is None:
            continue
        try:
            text = raw.decode("utf-8")
            manifest = bag.payload_manifest(text, str(path / name)) if layout == "bagit" else parse_manifest(text, str(path / name))
        except (UserError, UnicodeDecodeError):
            manifest = None
        return Existing(path, layout, manifest)
    return Existing(path, "unknown")


def choose_target(dest: Path, plan: Plan, ext: str) -> Path:
    """`<date>_<name>`, or with the run id's suffix when that name holds another run's bundle."""
    rid = plan.data.run_id
    short = rid.rsplit("-", 1)[-1]
    for cand in (plan.name, f"{plan.name}_{short}", f"{plan.name}_{rid}"):
        check_name(cand, "bundle name")
        p = dest / (cand + ext)
        if not os.path.lexists(p):
            return p
        if read_existing(p).run_id() == rid:
            return p
    raise UserError(f"{dest}: every bundle name for run {rid} is taken by other bundles or folders",
                    hint="pass --dest DIR to preserve elsewhere")


@contextlib.contextmanager
def _bundle_lock(dest: Path, name: str) -> Iterator[None]:
    """Serialise preserves of one bundle name (across processes and hosts sharing `dest`) with an
    flock on `dest/.lock-<name>`. The holder removes the file before releasing the lock, and a
    waiter that then gets the lock of the removed file tries again on a fresh one, so no lock file
    is left behind (one left by a killed preserve is removed by the next; _cleanup_stale)."""
    path = dest / f".lock-{name}"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                here = os.stat(path)
                mine = os.fstat(fd)
                if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                    break
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file was removed (or replaced) while we waited: lock the current one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _drop_idle_lock(path: str) -> None:
    """Remove a `.lock-*` file nobody holds (left by a killed preserve, or by orch before it
    removed its lock files)."""
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        here, mine = os.stat(path), os.fstat(fd)
        if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(path)
    except OSError:  # held (BlockingIOError), or already gone
        pass
    finally:
        os.close(fd)


_STALE = re.compile(r"^\.(tmp|old)-(.+)\+(.+)\+(\d+)\+([0-9a-f]{6})(\.tar(\.gz|\.zst)?)?$")


def _scratch(dest: Path, kind: str, name: str) -> Path:
    """A hidden sibling `.<kind>-<name>+<host>+<pid>+<rand>`, recognisable by _cleanup_stale."""
    return dest / f".{kind}-{name}+{socket.gethostname()}+{os.getpid()}+{os.urandom(3).hex()}"


def _cleanup_stale(dest: Path) -> None:
    """Tidy after preserves on this host that were killed: drop half-built bundles, put back a
    bundle that was moved aside for a rebuild when its replacement never arrived, and remove
    lock files nobody holds."""
    host = socket.gethostname()
    for entry in os.scandir(dest):
        if entry.name.startswith(".lock-") and entry.is_file(follow_symlinks=False):
            _drop_idle_lock(entry.path)
            continue
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


# run.json keys that only a transition of the run changes (record.annotate refuses to touch them):
# a run.json that differs in nothing else was annotated (monitor markers, check summaries, times).
_OUTCOME_KEYS = ("state", "attempts", "failure")


def _outcome(raw: bytes | None) -> str | None:
    try:
        rec = json.loads(raw or b"")
    except ValueError:
        return None
    return json.dumps([rec.get(k) for k in _OUTCOME_KEYS], sort_keys=True) if isinstance(rec, dict) else None


def annotations_only(plan: Plan, existing: Existing, changed: Iterable[str]) -> bool:
    """True when every changed payload file is generated by preserve, checks.json, or a run.json
    whose state, attempts and failure are those already preserved (what `orch check` and
    `orch monitor` rewrite between two preserves)."""
    by_rel = {i.rel: i for i in plan.items}
    for rel in changed:
        item = by_rel.get(rel)
        if item is None:
            return False  # a file gone from the run
        if item.generated or rel == "checks.json":
            continue
        if rel == "run.json":
            new = item.data if item.data is not None else item.src.read_bytes()  # type: ignore[union-attr]
            if _outcome(new) is not None and _outcome(new) == _outcome(existing.read(rel)):
                continue
        return False
    return True


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
    changed: list[str] = []
    with _bundle_lock(dest, plan.name):
        _cleanup_stale(dest)
        target = choose_target(dest, plan, ext)
        status = "created"
        if os.path.lexists(target):
            existing = read_existing(target)
            if existing.manifest is not None:
                new = planned_manifest(plan)
                if new == existing.manifest and existing.layout == "bagit" and existing.intact():
                    return PreserveResult(target, "unchanged", len(new), sum(i.size for i in plan.items),
                                          seconds=time.monotonic() - started, notes=plan.notes)
                changed = sorted(rel for rel in set(new) | set(existing.manifest)
                                 if new.get(rel) != existing.manifest.get(rel))
                if annotations_only(plan, existing, changed) and existing.intact():
                    status = "updated"
                elif not force:
                    changes = diff_manifests(existing.manifest, new) or ["files are missing from the existing bundle"]
                    raise UserError(
                        f"{target} already holds a different bundle of {d.run_id}:\n  "
                        + "\n  ".join(iter_lines(changes, 10)),
                        hint="pass --force to replace it (or --dest DIR to keep both)")
                else:
                    status = "replaced"
            elif not force:
                raise UserError(f"{target} exists and is not a complete bundle",
                                hint="pass --force to replace it")
            else:
                status = "replaced"
        tmp = _scratch(dest, "tmp", target.name.removesuffix(ext))
        tmp.mkdir()
        try:
            manifest, linked = build(plan, tmp, link=link_mode)
            final_tmp = tmp
            if archive:
                from orchestrator.preserve.archive import write_archive

                final_tmp = Path(f"{tmp}{ext}")
                write_archive(tmp, final_tmp, archive, arcname=target.name.removesuffix(ext), first=bag.TAG_FILES)
            _swap_into_place(final_tmp, target)
        finally:
            for leftover in (tmp, Path(f"{tmp}{ext}")):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                elif archive and leftover.exists():
                    leftover.unlink()
    return PreserveResult(target, status, len(manifest), sum(i.size for i in plan.items), linked,
                          time.monotonic() - started, plan.notes, changed)


def _swap_into_place(new: Path, target: Path) -> None:
    """Rename the finished bundle into place; an old one is moved aside first, then removed."""
    replace_dir(new, target, _scratch(target.parent, "old", target.name), sync=_fsync_dir)


def preserve_run(run: RunLike, dest: Path | str, checkpoints: str = "best", *, archive: str | None = None,
                 force: bool = False, copy: bool = False, link: bool = False) -> Path:
    """The bundle path of `run` under `dest` (for `orch monitor`'s preserve.auto)."""
    return preserve(run, dest, checkpoints=checkpoints, archive=archive, force=force, copy=copy, link=link,
                    log=lambda s: print(s, file=sys.stderr)).path
