"""`orch status [RUN...] [--json] [--watch S] [--state S] [--name N] [--where K=V] [--sort KEY] [--last N]`.

Every run at a glance. Reads only small files per run (run.json, heartbeat.json, the last line of
the metrics history read from the end) and asks each backend once per call. The table fits the
width (the terminal's; in a pipe `$COLUMNS`, else 120): optional columns (BEAT, STEP, TOK/S,
CHECKS, swept parameters, NAME) are dropped least important first and the NOTE is cut, so RUN,
STATE, %, TRAIN, VAL, ETA and the NOTE always show (`orchestrator/commands/table.py`). RUN is the
shortest unique id suffix, accepted wherever a run id is; `--wide` prints full ids and every column. CHECKS is the verdict summary the last
`orch check` (or monitor pass) stored in run.json (`7/8 pass`, `1/2 pass FAILED`); `-` before any
check. `--where` reads each candidate's spec.yaml, so it costs more than the other filters.
`--watch` redraws the table in place on a terminal; in a pipe it prints one line per run whenever
its state or progress tenth changes.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any, Callable, Iterator, Optional

from orchestrator.commands.argtypes import count, seconds
from orchestrator.errors import BackendUnavailable, UserError
from orchestrator.commands import runrows
from orchestrator.lifecycle import refresh as refresh_module
from orchestrator.lifecycle.refresh import RunView, refresh
from orchestrator.record import index
from orchestrator.record.heartbeat import heartbeat_age
from orchestrator.record.states import State
from orchestrator.record.tree import Damaged, ResultsRoot, Run
from orchestrator.commands.runrows import short_ids, summarize, summarize_damaged, table

WATCH_MIN, WATCH_MAX = 0.5, 86400.0

# --sort KEY -> the value sorted on (missing values last)
SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "name": lambda s: (s["name"] or "", s["run_id"]),
    "id": lambda s: s["run_id"],
    "created": lambda s: (s.get("created_ns") or 0, s["run_id"]),
    "state": lambda s: s["state"],
    "progress": lambda s: s.get("progress"),
    "step": lambda s: s.get("step"),
    "train": lambda s: (s.get("metrics") or {}).get("train_loss"),
    "val": lambda s: (s.get("metrics") or {}).get("val_loss"),
    "tok/s": lambda s: s.get("tokens_per_sec"),
    "eta": lambda s: s.get("eta_s"),
}
SORT_ALIASES = {"run": "id", "run_id": "id", "train_loss": "train", "val_loss": "val",
                "tokens_per_sec": "tok/s", "speed": "tok/s", "eta_s": "eta", "time": "created"}


# A results root that does not exist is a usage error, never "no runs" (cli.check_results_root).
READS_RESULTS = True

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids, unique prefixes or suffixes, or run names (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", type=seconds(WATCH_MIN, WATCH_MAX), metavar="SECONDS",
                   help=f"refresh every SECONDS ({WATCH_MIN:g} to {WATCH_MAX:g}) until interrupted")
    p.add_argument("--state", action="append", default=[], metavar="S", help="only runs in state S, or DAMAGED folders (repeatable)")
    p.add_argument("--name", action="append", default=[], metavar="N", help="only runs of experiment N (repeatable)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only runs whose spec has KEY (dotted, e.g. model.d_model) equal to VALUE; KEY!=VALUE excludes (repeatable)")
    p.add_argument("--sort", metavar="KEY", help="sort by " + ", ".join(SORT_KEYS) + " (default: name, then id)")
    p.add_argument("--reverse", action="store_true", help="reverse the order")
    p.add_argument("--last", type=count(1), metavar="N", help="only the N most recently created runs")
    p.add_argument("--wide", action="store_true", help="full run ids and every column, whatever the width (for grep)")
    p.add_argument("--no-poll", action="store_true", help="do not ask the backends; run folders only")


# ---- --where -------------------------------------------------------------------------------
def parse_where(items: list[str]) -> list[tuple[str, bool, str]]:
    """[(dotted key, wanted equal, value text)]; exit 2 on a clause that is not KEY=VALUE or KEY!=VALUE."""
    out = []
    for item in items:
        negate = "!=" in item
        key, sep, value = item.partition("!=" if negate else "=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or not all(p.strip() for p in parts) or any(c in key for c in " =<>"):
            raise UserError(f"--where {item!r}: expected KEY=VALUE or KEY!=VALUE with a dotted spec key",
                            hint="e.g. --where model.d_model=128 --where train.lr!=3e-4")
        out.append((key, not negate, value.strip()))
    return out


_MISSING = object()


def _lookup(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _flat_keys(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return [prefix] if prefix else []
    out = []
    for k, v in tree.items():
        out += _flat_keys(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def _equal(actual: Any, text: str) -> bool:
    """A spec value against a command-line value: as numbers when both are, else as YAML/text."""
    if isinstance(actual, bool) or actual is None:
        return str(actual).lower() == text.lower() or (actual is None and text in ("null", "~", ""))
    if isinstance(actual, (int, float)):
        try:
            return float(actual) == float(text)
        except ValueError:
            return False
    if isinstance(actual, (list, dict)):
        import yaml

        try:
            return yaml.safe_load(text) == actual
        except yaml.YAMLError:
            return False
    return str(actual) == text


def _read_spec(run: Run) -> dict[str, Any]:
    import yaml

    try:
        with open(run.paths.fast("spec"), encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def filter_where(runs: list[Run], clauses: list[tuple[str, bool, str]]) -> list[Run]:
    """The runs whose spec matches every clause; a key no candidate's spec has is exit 2 (did you mean)."""
    specs = {r.run_id: _read_spec(r) for r in runs}
    for key, _, _ in clauses:
        if runs and all(_lookup(s, key) is _MISSING for s in specs.values()):
            known = sorted({k for s in specs.values() for k in _flat_keys(s)})
            close = difflib.get_close_matches(key, known, n=3)
            raise UserError(f"--where {key}: no run's spec has this key",
                            hint=(f"did you mean {', '.join(close)}? " if close else "")
                            + "keys are dotted spec paths, as in `orch submit --set`")
    return [r for r in runs if all((_lookup(specs[r.run_id], key) is not _MISSING
                                    and _equal(_lookup(specs[r.run_id], key), value)) == want
                                   for key, want, value in clauses)]


# ---- collecting and ordering ------------------------------------------------------------------
def sort_key(name: Optional[str]) -> Callable[[dict[str, Any]], Any]:
    key = SORT_ALIASES.get((name or "name").lower(), (name or "name").lower())
    if key not in SORT_KEYS:
        close = difflib.get_close_matches(key, list(SORT_KEYS) + list(SORT_ALIASES), n=1)
        raise UserError(f"--sort {name}: unknown key",
                        hint=(f"did you mean {close[0]}? " if close else "") + "keys: " + ", ".join(SORT_KEYS))
    get = SORT_KEYS[key]

    def ordered(s: dict[str, Any]) -> Any:
        value = get(s)
        return (value is None, value if value is not None else 0)
    return ordered


def _created(pair: tuple[Run, Optional[dict[str, Any]]]) -> tuple[int, str]:
    """A (run, indexed summary or None) pair's creation time: from the summary when the index kept one."""
    run, summary = pair
    return ((summary["created_ns"] if summary is not None else run.record.get("created_ns")) or 0, run.run_id)


def collect(args: argparse.Namespace) -> tuple[list[dict[str, Any]], bool, Optional[list[str]]]:
    """(one summary per run, damaged folders included as DAMAGED rows, in the order asked for;
    whether a run asked for by name or id is damaged; every run id of the tree when it was scanned,
    for short ids). Without RUN arguments the tree is listed with the run index
    (`orchestrator.record.index`): a finished run whose run.json is unchanged since its summary was
    kept is not read again."""
    root = ResultsRoot(args.results)
    damaged: list[Damaged] = []
    where = parse_where(args.where)
    last = args.last
    order = sort_key(args.sort or "created") if (args.sort or last) else None  # a bad key fails before any work
    scan: Optional[index.Scan] = None
    if args.runs:
        runs = root.resolve_many(args.runs, damaged)
        all_ids = None  # short ids are unique in the whole tree: its folder names are listed when shown
    else:
        scan = index.scan(root, rows=ROWS_VERSION)
        runs, damaged = scan.runs, scan.damaged
        all_ids = [r.run_id for r in runs] + [d.label for d in damaged]
    asked_damaged = bool(args.runs and damaged)
    now = time.time()
    # (run, its summary from the index, or None: made below from its folder)
    of = KeptSummary.of
    pairs = [(r, of(r, scan.row(r), now)) for r in runs] if scan is not None else [(r, None) for r in runs]
    if args.name:
        pairs = [(r, s) for r, s in pairs if (s["name"] if s is not None else r.name) in args.name]
        damaged = [d for d in damaged if d.group in args.name]
    wanted = {s.upper() for s in args.state}
    unknown = wanted - {s.value for s in State} - {"DAMAGED"}
    if unknown:
        raise UserError(f"unknown state {', '.join(sorted(unknown))}",
                        hint="states: " + ", ".join([s.value for s in State] + ["DAMAGED"]))
    if where:
        keep = {id(r) for r in filter_where([r for r, _ in pairs], where)}
        pairs, damaged = [(r, s) for r, s in pairs if id(r) in keep], []
    if last and not wanted:  # before polling: only the newest runs are refreshed
        pairs, damaged = sorted(pairs, key=_created)[-last:], []
    views = iter(refresh([r for r, s in pairs if s is None], poll=not args.no_poll))
    summaries = []
    for r, s in pairs:
        if s is None:
            view = next(views)
            s = summarize(view)
            if scan is not None and view.state.terminal and not s.get("stale"):
                KeptSummary.keep(scan, s, view)
        if not wanted or s["state"] in wanted:
            summaries.append(s)
    if scan is not None:
        scan.save()
    if wanted:
        damaged = damaged if "DAMAGED" in wanted else []
        if last:  # the N newest runs in those states
            summaries, damaged = sorted(summaries, key=lambda s: (s.get("created_ns") or 0, s["run_id"]))[-last:], []
    summaries += [summarize_damaged(d) for d in damaged]
    if order is not None:
        summaries.sort(key=order, reverse=args.reverse)
    elif args.reverse:
        summaries.reverse()
    return summaries, asked_damaged, all_ids

# Summaries of finished runs are kept in the run index, tagged with the code that made them.
ROWS_VERSION = index.code_version(__file__, runrows.__file__, refresh_module.__file__, index.__file__)


class KeptSummary(Mapping[str, Any]):
    """A finished run's summary as the run index keeps it, read back: its JSON text (every key but the
    last two, which depend on the place and the clock: the run folder and the heartbeat's age, filled in
    now), decoded only when a key other than the few the filters use is read. `orch status --json` writes
    the text as it is kept: 10,000 finished runs are neither decoded nor encoded again.

    Kept in the index as the text plus the value `[heartbeat time or None, name, state, created_ns]`;
    a row of another shape is no row (the run is read and its row made again)."""

    __slots__ = ("value", "text", "run_id", "run_dir", "now", "_whole")
    _HOT = {"name": 1, "state": 2, "created_ns": 3}  # read without decoding (by the filters and --last)

    def __init__(self, value: list[Any], text: str, run_id: str, run_dir: str, now: float) -> None:
        self.value, self.text, self.run_id, self.run_dir, self.now = value, text, run_id, run_dir, now
        self._whole: Optional[dict[str, Any]] = None

    @staticmethod
    def keep(scan: index.Scan, s: dict[str, Any], view: RunView) -> None:
        """Keep summary `s` (made by `summarize`, whose last keys are run_dir and heartbeat_age_s) in the index."""
        body = {k: v for k, v in s.items() if k not in ("run_dir", "heartbeat_age_s")}
        beat = view.heartbeat.get("time") if view.heartbeat else None
        beat = float(beat) if heartbeat_age({"time": beat}) is not None else None  # garbage times: no beat
        scan.keep_row(view.run, [beat, s["name"], s["state"], s.get("created_ns")], json.dumps(body, default=str))

    @classmethod
    def of(cls, run: Run, row: Optional[tuple[Any, str]], now: float) -> Optional["KeptSummary"]:
        if row is None:
            return None
        value, text = row
        if (type(value) is list and len(value) == 4 and (value[0] is None or type(value[0]) is float)
                and text[-1:] == "}" and len(text) > 2):
            return cls(value, text, run.run_id, run.paths.dir, now)
        return None

    def age(self) -> Optional[float]:
        beat = self.value[0]
        return None if beat is None else max(0.0, self.now - beat)

    def whole(self) -> dict[str, Any]:
        """The summary as a dict (decoded once)."""
        if self._whole is None:
            d = json.loads(self.text)
            d["run_dir"], d["heartbeat_age_s"] = self.run_dir, self.age()
            self._whole = d
        return self._whole

    def __getitem__(self, key: str) -> Any:
        if key == "run_id":
            return self.run_id
        i = self._HOT.get(key)
        if i is not None:
            return self.value[i]
        return None if key == "stale" else self.whole()[key]  # a kept row is never stale

    def __iter__(self) -> Iterator[str]:
        return iter(self.whole())

    def __len__(self) -> int:
        return len(self.whole())


def dumps(summaries: list[Any], indent: Optional[int] = None) -> str:
    """The summaries as a JSON list, exactly as `json.dumps` writes them; kept rows written out as kept."""
    if indent is not None or not any(type(s) is KeptSummary for s in summaries):
        return json.dumps([s.whole() if type(s) is KeptSummary else s for s in summaries], indent=indent, default=str)
    parts = []
    for s in summaries:
        if type(s) is KeptSummary:
            seconds = s.age()
            age = "null" if seconds is None else float.__repr__(seconds)
            parts.append(f'{s.text[:-1]}, "run_dir": {encode_basestring_ascii(s.run_dir)}, "heartbeat_age_s": {age}}}')
        else:
            parts.append(json.dumps(s, default=str))
    return "[" + ", ".join(parts) + "]"


def unavailable(summaries: list[dict[str, Any]]) -> Optional[BackendUnavailable]:
    """The error to exit with (code 3) when a backend did not answer; the rows were shown stale."""
    why = next((s["stale"] for s in summaries if s.get("stale")), None)
    if why is None:
        return None
    return BackendUnavailable(f"the scheduler did not answer: {why}",
                              hint="the states shown are the last known ones (marked stale); try again later")


def short_ids_of(args: argparse.Namespace, summaries: list[dict[str, Any]], all_ids: Optional[list[str]]) -> dict[str, str]:
    """run id -> its shortest suffix unique in the whole results tree."""
    from orchestrator.commands.table import shortest_unique_suffixes

    shown = [s["run_id"] for s in summaries]
    return shortest_unique_suffixes(all_ids + shown) if all_ids is not None else short_ids(args.results, shown)


def render(summaries: list[dict[str, Any]], ids: dict[str, str], width: Optional[int]) -> str:
    """The status table in `width` columns with the short `ids`, or whole with full ids when
    `width` is None; `no runs` when there is none."""
    from orchestrator.commands.table import fit

    if not summaries:
        return "no runs"
    columns, rows = table(summaries, ids=ids if width is not None else {})
    return "\n".join(fit(columns, rows, width if width is not None else sys.maxsize))


def _watch(args: argparse.Namespace) -> int:
    """Redraw on a terminal; in a pipe, one line per run per change (progress.PipeLog)."""
    import os

    from orchestrator.commands.progress import PipeLog, counts, screen
    from orchestrator.commands.table import width_for

    out = sys.stdout
    tty = out.isatty()
    log = PipeLog()
    while True:
        summaries, _, all_ids = collect(args)
        ids = short_ids_of(args, summaries, all_ids)
        if tty:
            height = os.get_terminal_size(out.fileno()).lines
            footer = f"{time.strftime('%H:%M:%S')}  {counts(summaries) or 'no runs'}  (every {args.watch:g} s; Ctrl-C stops)"
            out.write("\033[H\033[2J" + "\n".join(screen(summaries, ids, width_for(out), height, footer)) + "\n")
        else:
            for line in log.lines(summaries, ids, width_for(out)):
                out.write(line + "\n")
        out.flush()
        time.sleep(args.watch)


def run(args: argparse.Namespace) -> int:
    if args.watch and not args.json:
        return _watch(args)
    while True:
        with index.paused_gc():  # (see there) collected after each table, in a --watch loop
            summaries, asked_damaged, all_ids = collect(args)
            text = dumps(summaries, indent=1 if sys.stdout.isatty() else None) if args.json else None
        if text is not None:
            # the C encoder (no indent) is 5x faster on 10,000 runs; indent only for a person reading
            print(text)
        else:
            from orchestrator.commands.table import width_for

            wide = args.wide
            print(render(summaries, {} if wide else short_ids_of(args, summaries, all_ids),
                         None if wide else width_for(sys.stdout)))
        if not args.watch:
            err = unavailable(summaries)
            if err is not None:
                print(err.render(), file=sys.stderr)
                return err.exit_code
            return 1 if asked_damaged else 0
        sys.stdout.flush()
        time.sleep(args.watch)


__all__ = ["add_arguments", "run", "summarize", "summarize_damaged"]
