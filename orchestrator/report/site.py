"""`orch report`: write the static site (index, one page per run, one per experiment) in one go.

The site is built in a hidden temporary folder beside the destination and renamed into place, so
a reader (a browser, an scp, a web server) sees the old site or the new one, never half of one:
the destination is moved aside and the new folder renamed in (two renames, microseconds apart),
then the old one is deleted. A destination that exists and is not an orch report is never
replaced. Concurrent builds of one destination (`orch monitor` and a person) take turns on a lock
file beside it.

A rebuild reuses (hard-links) the page of every run whose files did not change since the last
build (a signature of their sizes and modification times, plus the effective state), so the
monitor can refresh a 10,000-run site after each pass cheaply.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from orchestrator.errors import UserError
from orchestrator.record.atomicio import file_lock, read_json, replace_dir
from orchestrator.record.tree import ResultsRoot, Run
from orchestrator.report import collect
from orchestrator.report.pages import page

MARKER = ".orch-report.json"  # in the site: the format, and per run its signature, index row and sweep entry
FORMAT = 1  # bump when the pages' data changes shape: every page is then rebuilt
STATIC = Path(__file__).with_name("static")
STATIC_FILES = ("report.js", "report.css", "uPlot.iife.min.js", "uPlot.min.css", "LICENSE-uPlot.txt")
GROUP_CURVES = 20  # val-loss curves drawn on a sweep page (its best runs)
PARALLEL_FROM = 400  # runs from which pages are written by worker processes (one per core, at most 8)
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class BuildResult:
    out: Path
    runs: int
    reused: int
    seconds: float

    @property
    def index(self) -> Path:
        return self.out / "index.html"


def file_name(name: str) -> str:
    """A run id or experiment name as one safe file name (hashed when it is not a plain name)."""
    if _SAFE.match(name) and ".." not in name:
        return name
    return "x-" + hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def signature(view: Any, files: dict[str, tuple[int, int]]) -> str:
    """Changes whenever anything the run's page shows may have changed: a file of the run folder
    (`collect.listing`), its effective state or failure class."""
    # not view.reason: "no heartbeat for 1234 s" changes every second
    parts = [str(view.state), str((view.failure or {}).get("class"))]
    parts += [f"{k}:{m}:{n}" for k, (m, n) in sorted(files.items())]
    return hashlib.sha1("|".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def check_destination(results: Path, out: Path) -> None:
    """Refuse a destination whose replacement would delete something that is not a report."""
    out_r, res_r = out.resolve(), results.resolve()
    if out_r == res_r or res_r.is_relative_to(out_r):
        raise UserError(f"--out {out} would replace the results root {results}",
                        hint="choose a folder of its own, e.g. --out report")
    if out_r.is_relative_to(res_r):
        rel = out_r.relative_to(res_r).parts
        if not rel[0].startswith("."):
            raise UserError(f"--out {out} is inside the results tree, where it could collide with an experiment",
                            hint=f"use a hidden folder there ({res_r / '.report'}) or one outside the tree")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not an orch report: refusing to replace it",
                        hint="give a new or empty folder (an orch report folder holds .orch-report.json)")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _reuse(old: Path, new: Path) -> bool:
    try:
        os.link(old, new)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        try:
            shutil.copyfile(old, new)
            return True
        except OSError:
            return False


def _curves(run_dir: str) -> dict[str, Any]:
    """The val-loss curve of one run for a sweep page (logical rows, thinned)."""
    rows, _ = collect.logical_rows(collect.read_rows(os.path.join(run_dir, "eval", "metrics_history.jsonl")))
    pts = [(r["step"], v) for r in rows if (v := collect.number(r.get("val_loss"))) is not None]
    if len(pts) > collect.GROUP_POINTS:
        stride = len(pts) / collect.GROUP_POINTS
        pts = [pts[int(i * stride)] for i in range(collect.GROUP_POINTS - 1)] + [pts[-1]]
    return {"val_loss": [list(p) for p in pts]}


def build(results: Path, out: Path, refs: Optional[list[str]] = None, *, poll: bool = True,
          runs: Optional[Iterable[Run]] = None, log: Callable[[str], None] = lambda s: None) -> BuildResult:
    """Write the site for `refs` (default: every run under `results`) into `out`."""
    from orchestrator.commands.status import summarize
    from orchestrator.lifecycle.refresh import refresh

    t0 = time.perf_counter()
    results, out = Path(results), Path(out).absolute()
    if not results.is_dir():
        raise UserError(f"results root {results} does not exist", hint="pass --results DIR (or set ORCH_RESULTS)")
    check_destination(results, out)
    root = ResultsRoot(results)
    if runs is None:
        runs = root.resolve_many(refs) if refs else list(root.iter_runs())
    seen: set[str] = set()
    unique = [r for r in runs if not (r.paths.dir in seen or seen.add(r.paths.dir))]  # type: ignore[func-returns-value]
    views = refresh(unique, poll=poll)
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{out.name}.lock"):
        for stale in list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f".{out.name}.old-*")):
            shutil.rmtree(stale, ignore_errors=True)  # left by a build that was killed
        old = read_json(out / MARKER, default={}) if (out / MARKER).is_file() else {}
        old_runs = old.get("runs", {}) if isinstance(old, dict) and old.get("format") == FORMAT else {}
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            os.chmod(tmp, _umask_mode())
            reused = _write_site(tmp, out, results, views, old_runs, summarize, refs, log)
            _swap(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return BuildResult(out, len(views), reused, time.perf_counter() - t0)


def _write_site(tmp: Path, out: Path, results: Path, views: list[Any], old_runs: dict[str, Any],
                summarize: Callable[[Any], dict[str, Any]], refs: Optional[list[str]],
                log: Callable[[str], None]) -> int:
    (tmp / "static").mkdir()
    for name in STATIC_FILES:
        shutil.copyfile(STATIC / name, tmp / "static" / name)
    jobs = []
    for view in views:
        paths = view.run.paths
        rel = f"runs/{file_name(paths.group)}/{file_name(paths.run_id)}.html"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        jobs.append((view, summarize(view), rel, old_runs.get(paths.dir)))
    done = _run_pages(tmp, out, jobs)
    rows: list[dict[str, Any]] = []
    entries: dict[str, list[dict[str, Any]]] = {}
    marker: dict[str, Any] = {}
    for (view, _, rel, _), (sig, row, entry, _) in zip(jobs, done):
        rows.append(row)
        entries.setdefault(view.run.paths.group, []).append({**entry, "row": row, "dir": view.run.paths.dir})
        marker[view.run.paths.dir] = {"sig": sig, "page": rel, "row": row, "entry": entry}
    reused = sum(1 for d in done if d[3])
    (tmp / "groups").mkdir()
    groups = []
    for group, items in sorted(entries.items()):
        _group_page(tmp, group, items)
        counts: dict[str, int] = {}
        for it in items:
            counts[it["row"]["state"]] = counts.get(it["row"]["state"], 0) + 1
        groups.append({"name": group, "href": f"groups/{file_name(group)}.html", "runs": len(items), "states": counts})
    meta = {"generated": time.time(), "results": str(results.resolve()), "groups": groups,
            "selection": list(refs) if refs else None}
    _write(tmp / "index.html", page("orch report", "index", {"meta": meta, "runs": rows}, 0))
    _write(tmp / MARKER, json.dumps({"format": FORMAT, "generated": meta["generated"], "runs": marker},
                                    separators=(",", ":"), default=str))
    log(f"{len(rows)} runs, {reused} pages unchanged")
    return reused


# (tmp, out, jobs) for forked workers: set before the pool forks, so nothing is pickled to them
_WORK: tuple[Path, Path, list[Any]] | None = None


def _run_pages(tmp: Path, out: Path, jobs: list[Any]) -> list[tuple[str, dict[str, Any], dict[str, Any], bool]]:
    """Every run's page (reused when unchanged); in forked worker processes for big trees."""
    global _WORK
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    if workers < 2 or len(jobs) < PARALLEL_FROM or "fork" not in multiprocessing.get_all_start_methods():
        return [_one_page(tmp, out, *job) for job in jobs]
    _WORK = (tmp, out, jobs)
    try:
        chunk = max(1, len(jobs) // (workers * 8))
        spans = [(i, min(i + chunk, len(jobs))) for i in range(0, len(jobs), chunk)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_pages_span, spans)
    finally:
        _WORK = None
    return [r for part in parts for r in part]


def _pages_span(span: tuple[int, int]) -> list[tuple[str, dict[str, Any], dict[str, Any], bool]]:
    assert _WORK is not None
    tmp, out, jobs = _WORK
    return [_one_page(tmp, out, *job) for job in jobs[span[0]:span[1]]]


def _one_page(tmp: Path, out: Path, view: Any, summary: dict[str, Any], rel: str,
              prev: Optional[dict[str, Any]]) -> tuple[str, dict[str, Any], dict[str, Any], bool]:
    """(signature, index row, sweep entry, reused) of one run, its page written into `tmp`."""
    files = collect.listing(view.run.paths.dir)
    sig = signature(view, files)
    if prev and prev.get("sig") == sig and prev.get("page") == rel and _reuse(out / rel, tmp / rel):
        return sig, prev["row"], prev["entry"], True
    row, doc, texts, entry = collect.collect_run(view, summary, files)
    row["href"] = rel
    row["group_href"] = f"groups/{file_name(view.run.paths.group)}.html"
    doc["row"] = row
    doc["group_href"] = "../../" + row["group_href"]
    _write(tmp / rel, page(f"{row['name']} / {row['id']}", "run", doc, 2, texts))
    return sig, row, entry, False


def _group_page(tmp: Path, group: str, items: list[dict[str, Any]]) -> None:
    """One experiment: its runs against their swept parameters, scaling, and the best runs' curves."""
    def best_loss(it: dict[str, Any]) -> float:
        v = collect.number(it["best"].get("val_loss"))
        return v if v is not None else float("inf")

    ranked = sorted(items, key=best_loss)
    for it in ranked[:GROUP_CURVES]:
        if collect.number(it["best"].get("val_loss")) is not None:
            it["curve"] = _curves(it["dir"])
    data = {"name": group, "runs": [{k: v for k, v in it.items() if k != "dir"} for it in items]}
    _write(tmp / "groups" / f"{file_name(group)}.html", page(f"{group} (sweep)", "group", data, 1))


def _swap(tmp: Path, out: Path) -> None:
    """Put the finished site in place: the old one moves aside, the new one is renamed in."""
    replace_dir(tmp, out, out.parent / f".{out.name}.old-{secrets.token_hex(4)}")
