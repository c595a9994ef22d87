"""Side-by-side comparison of runs and bundles: what differs in the spec, and how they scored.

Why: "W=64 vs W=128" and "7.3M vs 18M params" comparisons were one-off notebook scripts. Here
the spec keys that differ (only those) and the chosen metrics at best/last/step=N become one
pandas table, printable (fitted to the terminal's width), or exported as JSON or CSV;
`plotting.compare_figure` draws the evolution plots. Runs are labelled by what differs between
them (`unique_labels`: the sweep point or the differing spec values, not run ids), in the
table, the JSON and the plot legends alike. Metrics are evaluation metrics (metrics history,
metrics.json) and train diagnostics (`loss`, `grad_norm`, `tokens_per_sec`...).
"""
from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from typing import Any, Sequence

from orchestrator.errors import UserError
from orchestrator.analysis.metrics import flatten, is_number
from orchestrator.analysis.rundata import LENGTH_KEY, RunData, parse_at_step

DEFAULT_METRICS = ("val_loss", "val_ppl")
# Keys that differ between any two runs without saying anything about the experiment.
_IGNORED = ("description", "env.", "preserve.", "monitor.", "resources.setup", "after", "tags", "sweep")


@dataclass
class Comparison:
    """The two halves of the table (pandas DataFrames, one column per run)."""

    items: list[RunData]
    at: str
    metrics: list[str]
    spec: Any  # DataFrame: differing spec keys x runs
    results: Any  # DataFrame: metrics x runs (and a `checks` row: each run's checks.json verdict)
    notes: list[str]  # e.g. the step shown when `--at step=N` has no record at N

    def to_json(self) -> dict[str, Any]:
        def col(df: Any) -> dict[str, dict[str, Any]]:
            return {str(k): {lab: _plain(df.at[k, lab]) for lab in df.columns} for k in df.index}

        return {
            "at": self.at,
            "runs": [{"label": d.label, "run_id": d.run_id, "name": d.name, "kind": d.kind, "path": str(d.root),
                      "state": d.state} for d in self.items],
            "spec_differences": col(self.spec),
            "metrics": col(self.results),
            "notes": self.notes,
        }

    def to_frame(self) -> Any:
        """One table with a `section` column, as written by --csv."""
        import pandas as pd

        spec = self.spec.copy()
        spec.insert(0, "section", "spec")
        res = self.results.copy()
        res.insert(0, "section", f"metric@{self.at}")
        out = pd.concat([spec, res])
        out.index.name = "key"
        return out

    def render(self, width: int = 120) -> str:
        """The table as text no wider than `width` columns: long cells and labels are shortened
        (`...`), and runs that do not fit side by side continue in a further block below."""
        parts = ["runs:"] + [_clip(f"  {d.label} = {d.run_id} ({d.kind})", width) for d in self.items] + [""]
        if len(self.spec):
            parts += ["spec differences:", _table(self.spec, width), ""]
        else:
            parts += ["spec differences: none", ""]
        parts += [f"metrics at {self.at}:", _table(self.results, width)]
        parts += [textwrap.fill(f"note: {n}", width, subsequent_indent="  ") for n in self.notes]
        return "\n".join(parts)


_CELL = 40  # widest cell and run label in the printed table (a key and one run fit 80 columns)
_KEY = 34  # widest row name


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 3, 1)] + "..."


def _table(df: Any, width: int) -> str:
    shown = df.map(lambda v: _clip(_show(v), _CELL))
    shown.columns = [_clip(str(c), _CELL) for c in shown.columns]
    shown.index = [_clip(str(k), _KEY) for k in shown.index]
    return shown.to_string(line_width=max(width, _KEY + _CELL + 4))


def _show(v: Any) -> str:
    """Table cells: 4 significant digits, integers as integers, '-' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) < 1e12 else f"{v:.4g}"
    return str(v)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v


def _cell(key: str, v: Any) -> Any:
    """A spec value as one cell: `checks` as their count (the verdicts are a row of their own),
    other lists and mappings as compact JSON."""
    if key == "checks" and isinstance(v, list):
        return f"{len(v)} check{'s' if len(v) != 1 else ''}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return v


def spec_differences(items: Sequence[RunData]) -> dict[str, list[Any]]:
    """Flattened spec keys whose values are not equal in every item."""
    flat = [flatten(d.spec) for d in items]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = {}
    for k in keys:
        if k.startswith(_IGNORED) or k in _IGNORED:
            continue
        raw = [f.get(k) for f in flat]
        if len({json.dumps(v, sort_keys=True, default=str) for v in raw}) > 1:
            out[k] = [_cell(k, v) for v in raw]
    return out


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its last component (`train.lr` -> `lr`) unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "-" if v is None else str(v)


def unique_labels(items: list[RunData], max_params: int = 3) -> None:
    """Label each item by what tells it apart: its name where names differ, then, among runs of
    one name, its sweep point or the spec values that differ (`lr=0.003, d_model=128`, at most
    `max_params`); the run id only when nothing else differs."""
    groups: dict[str, list[RunData]] = {}
    for it in items:
        groups.setdefault(it.name, []).append(it)
    for name, group in groups.items():
        params: list[str] = []
        if len(group) > 1:
            swept = list(dict.fromkeys(k for it in group for k in it.sweep_point))
            varying = {k: [it.sweep_point.get(k) for it in group] for k in swept}
            varying = {k: v for k, v in varying.items() if len({json.dumps(x, default=str) for x in v}) > 1}
            if not varying:
                varying = {k: v for k, v in spec_differences(group).items() if k != "name"}
            short = _short_keys(list(varying))
            keys = list(varying)[:max_params]
            params = [", ".join(f"{short[k]}={_value(varying[k][i])}" for k in keys) for i in range(len(group))]
        for i, it in enumerate(group):
            label = params[i] if params and params[i] else ""
            if len(groups) > 1 or not label:
                label = f"{name} {label}".strip() if label else name
            it.label = label
    seen: dict[str, int] = {}
    for it in items:  # nothing differs (the same run twice, a run and its bundle, identical specs)
        seen[it.label] = seen.get(it.label, 0) + 1
    dup = {lab for lab, n in seen.items() if n > 1}
    for it in items:
        if it.label in dup:
            it.label = f"{it.label} [{it.run_id.removeprefix(it.name + '-')}{' bundle' if it.kind == 'bundle' else ''}]"
    seen.clear()
    for it in items:  # still equal (the same run twice): number them
        seen[it.label] = seen.get(it.label, 0) + 1
        if seen[it.label] > 1:
            it.label = f"{it.label} #{seen[it.label]}"


def checks_summary(d: RunData) -> str | None:
    """A run's checks.json verdict in one cell: `3/3 pass`, or `1/2 pass FAILED: <failing names>`."""
    c = d.checks
    if not c:
        return None
    results = [r for r in c.get("results") or [] if isinstance(r, dict)]
    text = c.get("summary")
    if not isinstance(text, str):
        judged = [r for r in results if r.get("status") in ("pass", "fail", "unknown", "error")]
        text = f"{sum(r.get('status') == 'pass' for r in judged)}/{len(judged)} pass" if judged else "nothing judged"
        if c.get("passed") is False:
            text += " FAILED"
    failing = c.get("failing")
    if not isinstance(failing, list):
        failing = [r.get("name") for r in results if r.get("status") in ("fail", "unknown", "error")]
    names = [str(n).removeprefix("builtin:") for n in failing if n]
    return text + (": " + "; ".join(names) if names else "")


_NOT_METRICS = ("step", "time", "attempt", "tokens_seen")


def available_metrics(items: Sequence[RunData]) -> list[str]:
    """Every numeric metric any item recorded: evaluation metrics, then train diagnostics."""
    keys: dict[str, None] = {}
    for d in items:
        for row in (d.history[-1:] or []) + [d.final(), d.best()] + (d.diagnostics[-1:] or []):
            keys.update({k: None for k, v in row.items() if is_number(v) and k not in _NOT_METRICS})
    return list(keys)


def choose_metrics(items: Sequence[RunData], requested: str | None) -> list[str]:
    avail = available_metrics(items)
    if requested:
        metrics = [m.strip() for m in requested.split(",") if m.strip()]
        if not metrics:
            raise UserError("--metrics: give a comma-separated list, e.g. val_ppl,val_loss")
        unknown = [m for m in metrics if m not in avail]
        if unknown and len(unknown) == len(metrics):
            raise UserError(f"--metrics: none of the runs recorded {', '.join(unknown)}",
                            hint="recorded metrics: " + (", ".join(avail) or "none"))
        return metrics
    metrics = [m for m in DEFAULT_METRICS if m in avail] or [m for m in avail if "loss" in m][:2] or avail[:2]
    metrics += sorted((m for m in avail if LENGTH_KEY.match(m)), key=lambda k: float(LENGTH_KEY.match(k).group(1)))  # type: ignore[union-attr]
    if not metrics:
        raise UserError("none of the runs recorded any metrics (eval/metrics.json, eval/metrics_history.jsonl "
                        "or logs/train_diagnostics.jsonl)")
    return metrics


def compare(items: list[RunData], metrics: str | None = None, at: str = "best") -> Comparison:
    """Build the comparison table of `items` (labels must already be unique)."""
    import pandas as pd

    asked = None if at in ("best", "last") else parse_at_step(at)
    chosen = choose_metrics(items, metrics)
    labels = [d.label for d in items]
    diffs = spec_differences(items)
    spec = (pd.DataFrame.from_dict(diffs, orient="index", columns=labels, dtype=object) if diffs
            else pd.DataFrame(columns=labels, dtype=object))
    rows: dict[str, list[Any]] = {}
    at_rows = [d.at(at) for d in items]
    rows["step"] = [r.get("step") for r in at_rows]
    for m in chosen:
        rows[m] = [r.get(m) if is_number(r.get(m)) else None for r in at_rows]
    verdicts = [checks_summary(d) for d in items]
    if any(verdicts):
        rows["checks"] = verdicts
    results = pd.DataFrame.from_dict(rows, orient="index", columns=labels, dtype=object)
    return Comparison(list(items), at, chosen, spec, results, _step_notes(items, at_rows, asked))


def _step_notes(items: Sequence[RunData], at_rows: Sequence[dict[str, Any]], asked: int | None) -> list[str]:
    """What `--at step=N` showed where no run recorded step N: the newest step at or before it
    (metrics are not interpolated between evaluations)."""
    if asked is None:
        return []
    shown: dict[str, list[str]] = {}
    for d, row in zip(items, at_rows):
        step = row.get("step")
        if not is_number(step):
            shown.setdefault("nothing recorded at or before it", []).append(d.label)
        elif step != asked:
            shown.setdefault(f"nearest recorded step {_value(step)}", []).append(d.label)
    whole = len(shown) == 1 and sum(map(len, shown.values())) == len(items)
    return [f"{text} (asked {asked}: the newest record at or before it, not interpolated)"
            + ("" if whole else " for " + ", ".join(who)) for text, who in shown.items()]
