"""Judge a run: the spec's `checks:` plus built-in health checks that every run gets.

Why: success criteria used to live in notebooks and were checked by hand in the morning. This
module turns a run folder into a flat table of metric names (`val_loss`, `best.val_loss`,
`last.loss`, `latent.first_token_acc`; names, final values and directions as defined once in
`orchestrator.analysis.metrics`, which `orch compare` reads too) and evaluates each check
expression against it with the safe evaluator in `checks.expr`. A check that names a metric the run does not have is reported as
UNKNOWN with a suggestion, never as a silent pass. Nothing here imports torch: checkpoints are
judged by their manifest, COMPLETE marker and file sizes (`orchestrator.record.checkpoints`).
"""
from __future__ import annotations

import difflib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from orchestrator.analysis.metrics import (as_number, direction, final_values, flatten, is_number as _is_number,
                                           metric_values, spec_directions)
from orchestrator.record.atomicio import atomic_write_json
from orchestrator.checks.expr import CheckSyntaxError, UnknownMetric, compile_check
from orchestrator.record import checkpoints as ckpts
from orchestrator.record.heartbeat import heartbeat_age, read_heartbeat
from orchestrator.record.paths import RunPaths
from orchestrator.record.record import now_iso
from orchestrator.record.tree import Run
from orchestrator.record.states import State

PASS, FAIL, UNKNOWN, ERROR, NOTE, SKIP = "pass", "fail", "unknown", "error", "note", "skip"

_LOSS_KEYS = ("loss", "train_loss", "val_loss")
_DEFAULT_STALL = 600.0


# ------------------------------------------------------------------------------ results
@dataclass
class CheckResult:
    """One line of the verdict table (and of checks.json)."""

    name: str  # the expression, or `builtin:<id>`
    kind: str  # "spec" | "builtin"
    severity: str  # "error" | "warn" | "info"
    status: str  # pass | fail | unknown | error | note | skip
    detail: str = ""
    message: str | None = None  # the spec's own message, shown on failure
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        """An error-severity check that did not pass (fail, unknown metric, or broken)."""
        return self.severity == "error" and self.status in (FAIL, UNKNOWN, ERROR)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["measured"] = {k: _jsonable(v) for k, v in self.measured.items()}
        d["passed"] = self.status == PASS
        return d


@dataclass
class RunVerdict:
    run_id: str
    state: str
    results: list[CheckResult]
    checked_at: str = field(default_factory=now_iso)

    @property
    def passed(self) -> bool:
        return not any(r.blocking for r in self.results)

    @property
    def failing(self) -> list[CheckResult]:
        return [r for r in self.results if r.blocking]

    @property
    def summary(self) -> str:
        return summarize(self.results)

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "run_id": self.run_id,
            "state": self.state,
            "checked_at": self.checked_at,
            "passed": self.passed,
            "summary": self.summary,
            "counts": counts,
            "failing": [r.name for r in self.failing],
            "results": [r.to_dict() for r in self.results],
        }


JUDGED = (PASS, FAIL, UNKNOWN, ERROR)


def summarize(results: Iterable[CheckResult]) -> str:
    """The one-line verdict `orch check` prints and `orch status` shows (from run.json's copy):
    `7/7 pass`, `6/7 pass` (a warn-level check failed: the verdict still passes), `1/2 pass
    FAILED` (an error-level check did not pass). Only judged checks count, in both numbers:
    pass, fail, unknown and error; skips (not applicable yet) and notes (information) in neither.
    """
    results = list(results)
    judged = [r for r in results if r.status in JUDGED]
    ok = sum(1 for r in judged if r.status == PASS)
    text = f"{ok}/{len(judged)} pass" if judged else "nothing judged"
    return text + (" FAILED" if any(r.blocking for r in results) else "")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # checks.json stays strict JSON
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return repr(v) if isinstance(v, str) else str(v)


# ------------------------------------------------------------------------------ reading metrics
@dataclass
class Records:
    """What the trainer wrote, parsed tolerantly, with counts of what could not be parsed."""

    metrics: dict[str, Any] | None = None  # eval/metrics.json
    metrics_error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # eval/metrics_history.jsonl
    diagnostics: list[dict[str, Any]] = field(default_factory=list)  # logs/train_diagnostics.jsonl
    bad_lines: dict[str, int] = field(default_factory=dict)  # file -> corrupt lines (not counting a torn tail)

    @property
    def empty(self) -> bool:
        return not self.metrics and not self.history and not self.diagnostics


def _read_jsonl_counting(path: Path) -> tuple[list[dict[str, Any]], int]:
    """All records plus the number of corrupt complete lines (a torn last line is not corrupt)."""
    out: list[dict[str, Any]] = []
    bad = 0
    try:
        fh = open(path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        return out, 0
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                bad += 1
    return out, bad


def read_records(paths: RunPaths) -> Records:
    rec = Records()
    if paths.metrics.exists():
        try:
            data = json.loads(paths.metrics.read_bytes())
            if isinstance(data, dict):
                rec.metrics = data
            else:
                rec.metrics_error = "eval/metrics.json is not a JSON object"
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            rec.metrics_error = f"eval/metrics.json is not valid JSON ({exc})"
    rec.history, bad_h = _read_jsonl_counting(paths.metrics_history)
    rec.diagnostics, bad_d = _read_jsonl_counting(paths.diagnostics)
    if bad_h:
        rec.bad_lines["eval/metrics_history.jsonl"] = bad_h
    if bad_d:
        rec.bad_lines["logs/train_diagnostics.jsonl"] = bad_d
    return rec


def build_metrics(rec: Records, *, directions: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The namespace checks see.

    - `name`: the final value (`analysis.metrics.final_values`): metrics.json (`final` section,
      then top level), else the newest record of metrics_history.jsonl holding it, else of
      train_diagnostics.jsonl.
    - `last.name` / `latest.name`: the newest logged value (history, then diagnostics).
    - `first.name`, `min.name`, `max.name`: over the logged values.
    - `best.name`: metrics.json's `best` section, else min or max over the logged values by the
      metric's direction (`analysis.metrics.direction` with the spec's `directions`); a metric
      whose direction is unknown has no `best.` value (a check on it says why).
    Nested keys are flattened with dots (`latent.first_token_acc`).
    """
    last: dict[str, Any] = {}
    first: dict[str, Any] = {}
    lo: dict[str, Any] = {}
    hi: dict[str, Any] = {}
    # oldest source first, so newer sources overwrite
    for source in (rec.diagnostics, rec.history):
        seen_first: dict[str, Any] = {}
        for r in source:
            for k, v in metric_values(r).items():
                last[k] = v
                seen_first.setdefault(k, v)
                if _is_number(v) and not (isinstance(v, float) and math.isnan(v)):
                    lo[k] = v if k not in lo else min(lo[k], v)
                    hi[k] = v if k not in hi else max(hi[k], v)
        first.update(seen_first)
    final = final_values(rec.metrics, rec.history, rec.diagnostics)  # what `orch compare` calls final
    best_from_file = (metric_values(rec.metrics["best"])
                      if rec.metrics and isinstance(rec.metrics.get("best"), Mapping) else {})
    out: dict[str, Any] = dict(final)
    for k, v in last.items():
        out[f"last.{k}"] = v
        out[f"latest.{k}"] = v
    for k, v in first.items():
        out[f"first.{k}"] = v
    for k in lo:
        out[f"min.{k}"] = lo[k]
        out[f"max.{k}"] = hi[k]
        way = direction(k, directions)
        if way is not None:
            out[f"best.{k}"] = hi[k] if way == "max" else lo[k]
    for k, v in best_from_file.items():
        out[f"best.{k}"] = v
    # the newest final values also under last./latest. when only metrics.json has them
    for k, v in final.items():
        out.setdefault(f"last.{k}", v)
        out.setdefault(f"latest.{k}", v)
    return out


class MetricView(Mapping[str, Any]):
    """The metric table, also resolving a bare name by a unique dotted suffix
    (`first_token_acc` -> `latent.first_token_acc`), and remembering what was read."""

    _PREFIXES = ("best.", "last.", "latest.", "first.", "min.", "max.")

    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.read: dict[str, Any] = {}
        self.aliases: dict[str, str] = {}

    def _lookup(self, key: str) -> tuple[bool, Any]:
        if key in self.table:
            return True, self.table[key]
        prefix = next((p for p in self._PREFIXES if key.startswith(p)), "")
        base = key[len(prefix):]
        cands = [k for k in self.table if k.startswith(prefix) and k[len(prefix):].endswith("." + base)
                 and not any(k.startswith(p) for p in self._PREFIXES if p != prefix)]
        if len(cands) == 1:
            self.aliases[key] = cands[0]
            return True, self.table[cands[0]]
        return False, None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._lookup(key)[0]

    def __getitem__(self, key: str) -> Any:
        found, value = self._lookup(key)
        if not found:
            raise KeyError(key)
        self.read[key] = value
        return value

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)


def suggest(name: str, names: Iterable[str]) -> str | None:
    names = list(names)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not close:
        base = name.rsplit(".", 1)[-1]
        close = [n for n in names if n.rsplit(".", 1)[-1] == base][:3]
    return ", ".join(close) if close else None


# ------------------------------------------------------------------------------ evaluation
def evaluate_check(expr: str, table: Mapping[str, Any], *, severity: str = "error",
                   message: str | None = None) -> CheckResult:
    """One spec check against the metric table; never raises."""
    res = CheckResult(name=expr, kind="spec", severity=severity, status=ERROR, message=message)
    try:
        compiled = compile_check(expr)
    except CheckSyntaxError as exc:
        res.detail = f"invalid check: {exc}"
        return res
    view = MetricView(dict(table))
    try:
        value = compiled.evaluate(view)
    except UnknownMetric as exc:
        res.status = UNKNOWN
        base = exc.name[len("best."):] if exc.name.startswith("best.") else None
        hint = suggest(exc.name, view.table)
        if base is not None and f"min.{base}" in view:
            res.detail = (f"{exc.name}: whether a higher or lower {base} is better is unknown; say so in the spec "
                          f"(metrics: {{direction: {{{base}: max}}}} or min), or check min.{base} / max.{base}")
        else:
            res.detail = f"unknown metric {exc.name!r}" + (f"; did you mean {hint}?" if hint else
                                                             " (the run logged no such value)")
        res.measured = dict(view.read)
        return res
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, ArithmeticError) as exc:
        res.detail = f"cannot evaluate: {type(exc).__name__}: {exc}"
        res.measured = dict(view.read)
        return res
    res.measured = dict(view.read)
    shown = ", ".join(f"{view.aliases.get(k, k)} = {fmt_value(v)}" for k, v in res.measured.items())
    if value:
        res.status = PASS
        res.detail = f"measured {shown}" if shown else "true"
    else:
        res.status = FAIL
        nan = [k for k, v in res.measured.items() if isinstance(v, float) and math.isnan(v)]
        res.detail = f"measured {shown}" + (" (NaN never passes)" if nan else "")
    return res


# ------------------------------------------------------------------------------ built-in checks
def _steps(records: list[dict[str, Any]]) -> list[float]:
    return [r["step"] for r in records if _is_number(r.get("step"))]


def check_metrics_present(rec: Records, state: State) -> CheckResult:
    r = CheckResult("builtin:metrics_present", "builtin", "error", PASS)
    if rec.metrics_error:
        r.status, r.detail = FAIL, rec.metrics_error
    elif rec.bad_lines:
        r.severity = "warn"
        r.status = FAIL
        r.detail = "corrupt lines: " + ", ".join(f"{f} ({n})" for f, n in rec.bad_lines.items())
    elif rec.empty:
        if state == State.COMPLETED:
            r.status, r.detail = FAIL, "the run completed but logged no metrics"
        else:
            r.severity, r.status, r.detail = "warn", SKIP, "no metrics logged yet"
    else:
        parts = []
        if rec.metrics is not None:
            parts.append("metrics.json")
        if rec.history:
            parts.append(f"{len(rec.history)} evals")
        if rec.diagnostics:
            parts.append(f"{len(rec.diagnostics)} train records")
        r.detail = ", ".join(parts)
    return r


def check_steps_increasing(rec: Records, attempts: int) -> CheckResult:
    """Steps must increase; a resumed attempt may repeat steps logged after its checkpoint."""
    r = CheckResult("builtin:steps_increasing", "builtin", "warn", PASS)
    problems = []
    for label, recs in (("train_diagnostics", rec.diagnostics), ("metrics_history", rec.history)):
        steps = _steps(recs)
        backs = [(a, b) for a, b in zip(steps, steps[1:]) if b <= a]
        if len(backs) > max(0, attempts - 1):
            a, b = backs[0]
            problems.append(f"{label}: step {b} after {a} ({len(backs)} times)")
    if problems:
        r.status, r.detail = FAIL, "; ".join(problems)
    elif not rec.diagnostics and not rec.history:
        r.status, r.detail = SKIP, "no steps logged"
    else:
        r.detail = "steps increase"
    return r


def _nonfinite_losses(rec: Records) -> list[tuple[str, Any, Any]]:
    bad = []
    for label, recs in (("train", rec.diagnostics), ("eval", rec.history)):
        for x in recs:
            for key in _LOSS_KEYS:
                if key not in x:
                    continue
                v = as_number(x[key])
                if isinstance(v, float) and not math.isfinite(v):
                    bad.append((f"{label} {key}", x.get("step"), v))
    return bad


def check_finite_loss(rec: Records) -> CheckResult:
    r = CheckResult("builtin:finite_loss", "builtin", "error", PASS)
    bad = _nonfinite_losses(rec)
    skipped = sum(int(x.get("nonfinite") or 0) for x in rec.diagnostics if _is_number(x.get("nonfinite")))
    if bad:
        what, step, value = bad[0]
        r.status = FAIL
        r.detail = f"{what} is {value} at step {step}" + (f" ({len(bad)} records)" if len(bad) > 1 else "")
        r.measured = {"first_nonfinite_step": step}
    elif not any(x.get(k) is not None for x in rec.diagnostics + rec.history for k in _LOSS_KEYS):
        r.status, r.detail = SKIP, "no loss logged"
    else:
        r.detail = "all logged losses are finite"
        if skipped:
            r.severity, r.status = "warn", NOTE
            r.detail += f"; the trainer skipped {skipped} non-finite step(s)"
    return r


def check_loss_decreased(rec: Records) -> CheckResult:
    """Mean of the first few logged losses vs the last few (noise-tolerant)."""
    r = CheckResult("builtin:loss_decreased", "builtin", "warn", PASS)
    source, key = (rec.diagnostics, "loss")
    vals = [x[key] for x in source if _is_number(x.get(key)) and math.isfinite(x[key])]
    if len(vals) < 4:
        vals = [x["val_loss"] for x in rec.history if _is_number(x.get("val_loss")) and math.isfinite(x["val_loss"])]
        key = "val_loss"
    if len(vals) < 2:
        r.status, r.detail = SKIP, "too few losses logged to tell"
        return r
    k = max(1, min(5, len(vals) // 4))
    start, end = statistics.fmean(vals[:k]), statistics.fmean(vals[-k:])
    r.measured = {f"first.{key}": start, f"last.{key}": end}
    if end < start:
        r.detail = f"{key} {fmt_value(start)} -> {fmt_value(end)}"
    else:
        r.status, r.detail = FAIL, f"{key} did not go down: {fmt_value(start)} -> {fmt_value(end)}"
    return r


def check_heartbeat(paths: RunPaths, state: State, stall_after: float, now: float | None = None) -> CheckResult:
    r = CheckResult("builtin:heartbeat_fresh", "builtin", "error", PASS)
    if state != State.RUNNING:
        r.status, r.detail = SKIP, f"not running ({state})"
        return r
    age = heartbeat_age(read_heartbeat(paths.heartbeat), now)
    if age is None:
        r.severity, r.status, r.detail = "warn", SKIP, "no heartbeat yet"
    elif age > stall_after:
        r.status, r.detail = FAIL, f"no heartbeat for {age:.0f}s (stall_after {stall_after:.0f}s)"
    else:
        r.detail = f"heartbeat {age:.0f}s ago"
    r.measured = {"heartbeat_age_s": None if age is None else round(age, 1)}
    return r


def check_checkpoint(paths: RunPaths) -> CheckResult:
    """The newest step checkpoint validates (manifest, marker, file sizes: `orchestrator.record.checkpoints`)."""
    r = CheckResult("builtin:checkpoint_loadable", "builtin", "error", PASS)
    folders = ckpts.step_folders(paths.ckpt)[::-1]  # newest first; a save in progress (.tmp-*) is not one
    if not folders:
        r.severity, r.status, r.detail = "warn", SKIP, "no checkpoints"
        return r
    why = ckpts.validate(folders[0])
    if why is None:
        r.detail = f"{folders[0].name}: complete, its files match the manifest"
        return r
    good = next((d for d in folders[1:] if ckpts.validate(d) is None), None)
    r.status = FAIL
    r.detail = f"{folders[0].name}: {why}" + (f"; newest loadable is {good.name}" if good else "; no loadable checkpoint")
    if good:
        r.severity = "warn"  # a resume still has somewhere to start from
    return r


# Peak and total device memory as trainers log them (the lm trainer: `mem_peak_gb`, one value per
# device); a fraction can be logged directly. Lists are per device: the fullest device counts.
_PEAK_KEYS = {"mem_peak_gb": 1024.0, "gpu_mem_peak_gb": 1024.0, "gpu_mem_peak_mb": 1.0, "peak_mem_mb": 1.0,
              "max_memory_allocated_mb": 1.0, "mem_peak_mb": 1.0}
_TOTAL_KEYS = {"mem_total_gb": 1024.0, "gpu_mem_total_gb": 1024.0, "gpu_mem_total_mb": 1.0, "total_mem_mb": 1.0,
               "mem_total_mb": 1.0}
_FRAC_KEYS = ("gpu_mem_frac", "peak_mem_frac", "mem_frac")


def _largest(v: Any) -> float | None:
    vals = v if isinstance(v, list) else [v]
    nums = [float(x) for x in vals if _is_number(x) and math.isfinite(x)]
    return max(nums) if nums else None


def _first_number(rec: Mapping[str, Any], keys: Iterable[str] | Mapping[str, float]) -> float | None:
    scale = keys if isinstance(keys, Mapping) else {k: 1.0 for k in keys}
    for k, factor in scale.items():
        v = _largest(rec.get(k))
        if v is not None:
            return v * factor
    return None


def memory_note(rec: Records) -> CheckResult | None:
    """'peak 56% of GPU memory: batch size could be about 1.7x' when the trainer logged memory."""
    fracs = []
    for x in rec.diagnostics + ([flatten(rec.metrics)] if rec.metrics else []):
        frac = _first_number(x, _FRAC_KEYS)
        if frac is None:
            peak, total = _first_number(x, _PEAK_KEYS), _first_number(x, _TOTAL_KEYS)
            if peak is not None and total:
                frac = peak / total
        if frac is not None and frac > 0:
            fracs.append(frac if frac <= 1.5 else frac / 100.0)
    if not fracs:
        return None
    peak = max(fracs)
    r = CheckResult("builtin:gpu_memory", "builtin", "info", NOTE, measured={"gpu_mem_peak_frac": round(peak, 3)})
    if peak < 0.7:
        # keep ~5% headroom; activations scale about linearly with the batch
        r.detail = f"peak {peak:.0%} of GPU memory: batch size could be about {0.95 / peak:.1f}x"
    elif peak > 0.95:
        r.detail = f"peak {peak:.0%} of GPU memory: close to out-of-memory"
    else:
        r.detail = f"peak {peak:.0%} of GPU memory"
    return r


_TPUT_KEYS = ("tokens_per_sec", "tokens_per_s", "tok_per_s", "tok_s", "throughput", "samples_per_sec")


def throughput_note(rec: Records) -> CheckResult | None:
    """Recent throughput vs the run's own earlier throughput (medians, so one slow step is noise)."""
    key = next((k for k in _TPUT_KEYS if any(_is_number(x.get(k)) for x in rec.diagnostics)), None)
    if key is None:
        return None
    vals = [float(x[key]) for x in rec.diagnostics if _is_number(x.get(key)) and math.isfinite(x[key]) and x[key] > 0]
    if len(vals) < 6:
        return None
    k = max(3, len(vals) // 5)
    early, late = statistics.median(vals[:k]), statistics.median(vals[-k:])
    ratio = late / early if early else 1.0
    r = CheckResult("builtin:throughput", "builtin", "info", NOTE,
                    measured={f"early.{key}": round(early, 1), f"recent.{key}": round(late, 1)})
    if ratio < 0.8:
        r.detail = f"throughput fell to {ratio:.0%} of its earlier level ({early:.0f} -> {late:.0f} {key})"
    elif ratio > 1.25:
        r.detail = f"throughput rose to {ratio:.0%} of its earlier level ({early:.0f} -> {late:.0f} {key})"
    else:
        r.detail = f"throughput steady ({late:.0f} {key}, {ratio:.0%} of earlier)"
    return r


def check_run_state(state: State, failure: Mapping[str, Any] | None) -> CheckResult:
    """A run that ended other than COMPLETED cannot meet its criteria, whatever its last metrics say."""
    r = CheckResult("builtin:run_completed", "builtin", "error", PASS, detail=str(state))
    if state.active:
        r.severity, r.status, r.detail = "warn", SKIP, f"still {state}"
    elif state != State.COMPLETED:
        r.status = FAIL
        cls = (failure or {}).get("class")
        r.detail = f"the run ended {state}" + (f" ({cls}: {(failure or {}).get('summary', '')})" if cls else "")
    return r


def builtin_checks(paths: RunPaths, rec: Records, state: State, *, attempts: int, stall_after: float,
                   now: float | None = None, failure: Mapping[str, Any] | None = None) -> list[CheckResult]:
    out = [
        check_run_state(state, failure),
        check_metrics_present(rec, state),
        check_steps_increasing(rec, attempts),
        check_finite_loss(rec),
        check_loss_decreased(rec),
        check_heartbeat(paths, state, stall_after, now),
        check_checkpoint(paths),
    ]
    for extra in (memory_note(rec), throughput_note(rec)):
        if extra is not None:
            out.append(extra)
    return out


# ------------------------------------------------------------------------------ whole runs
def _load_spec(run: Run) -> tuple[Any, str | None]:
    from orchestrator.errors import OrchError
    from orchestrator.spec.schema import spec_from_run

    if not run.paths.spec.exists():
        return None, "the run folder has no spec.yaml"
    try:
        return spec_from_run(run.paths.spec), None
    except OrchError as exc:
        return None, f"spec.yaml is invalid: {exc.message}"
    except Exception as exc:  # unreadable YAML
        return None, f"spec.yaml cannot be read: {type(exc).__name__}: {exc}"


def check_run(run: Run, now: float | None = None) -> RunVerdict:
    """Every built-in and spec check of one run (no file is written)."""
    from orchestrator.spec.schema import parse_duration

    rec_json = run.reload()
    state = run.state
    spec, spec_problem = _load_spec(run)
    stall_after = _DEFAULT_STALL
    if spec is not None:
        stall_after = parse_duration(spec.monitor.stall_after)
    rec = read_records(run.paths)
    attempts = len(rec_json.get("attempts") or []) or 1
    results = builtin_checks(run.paths, rec, state, attempts=attempts, stall_after=stall_after, now=now,
                             failure=rec_json.get("failure"))
    if spec_problem:
        results.append(CheckResult("builtin:spec", "builtin", "error", ERROR, spec_problem))
    if spec is not None and spec.checks:
        table = build_metrics(rec, directions=spec_directions(spec))
        for c in spec.checks:
            results.append(evaluate_check(c.expr, table, severity=c.severity, message=c.message))
    return RunVerdict(run.run_id, str(state), results)


def write_verdict(run: Run, verdict: RunVerdict) -> None:
    """checks.json, atomically, plus a short summary in run.json for `orch status`."""
    atomic_write_json(run.paths.checks, verdict.to_dict())

    def mutate(rec: dict[str, Any]) -> None:
        rec["checks"] = {"passed": verdict.passed, "failing": [r.name for r in verdict.failing],
                         "summary": verdict.summary, "checked_at": verdict.checked_at}
    if run.paths.run_json.exists():
        run.annotate(mutate)


def check_and_record(run: Run, now: float | None = None) -> RunVerdict:
    verdict = check_run(run, now if now is not None else time.time())
    write_verdict(run, verdict)
    return verdict
