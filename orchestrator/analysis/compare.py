"""Side-by-side comparison of runs and bundles: what differs in the spec, and how they scored.

Why: "W=64 vs W=128" and "7.3M vs 18M params" comparisons were one-off notebook scripts. Here
the spec keys that differ (only those) and the chosen metrics at best/last/step=N become one
pandas table, printable, or exported as JSON or CSV; `compare_figure` draws the evolution plots.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

from orchestrator.errors import UserError
from orchestrator.analysis.metrics import flatten, is_number
from orchestrator.analysis.rundata import LENGTH_KEY, RunData

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
    results: Any  # DataFrame: metrics x runs

    def to_json(self) -> dict[str, Any]:
        def col(df: Any) -> dict[str, dict[str, Any]]:
            return {str(k): {lab: _plain(df.at[k, lab]) for lab in df.columns} for k in df.index}

        return {
            "at": self.at,
            "runs": [{"label": d.label, "run_id": d.run_id, "name": d.name, "kind": d.kind, "path": str(d.root),
                      "state": d.state} for d in self.items],
            "spec_differences": col(self.spec),
            "metrics": col(self.results),
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

    def render(self) -> str:
        import pandas as pd

        with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200,
                               "display.max_colwidth", 40):
            parts = ["runs: " + ", ".join(f"{d.label} = {d.run_id} ({d.kind})" for d in self.items), ""]
            if len(self.spec):
                parts += ["spec differences:", self.spec.map(_show).to_string(), ""]
            else:
                parts += ["spec differences: none", ""]
            parts += [f"metrics at {self.at}:", self.results.map(_show).to_string()]
        return "\n".join(parts)


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


def _cell(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return v


def spec_differences(items: Sequence[RunData]) -> dict[str, list[Any]]:
    """Flattened spec keys whose values are not equal in every item."""
    flat = [flatten(d.spec) for d in items]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = {}
    for k in keys:
        if k.startswith(_IGNORED) or k in _IGNORED:
            continue
        values = [_cell(f.get(k)) for f in flat]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            out[k] = values
    return out


def available_metrics(items: Sequence[RunData]) -> list[str]:
    keys: dict[str, None] = {}
    for d in items:
        for row in (d.history[-1:] or []) + [d.final(), d.best()]:
            keys.update({k: None for k, v in row.items() if is_number(v) and k != "step"})
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
        raise UserError("none of the runs recorded any metrics (eval/metrics.json or eval/metrics_history.jsonl)")
    return metrics


def compare(items: list[RunData], metrics: str | None = None, at: str = "best") -> Comparison:
    """Build the comparison table of `items` (labels must already be unique)."""
    import pandas as pd

    if at not in ("best", "last") and not at.startswith("step="):
        raise UserError(f"--at {at!r}: use best, last or step=N")
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
    results = pd.DataFrame.from_dict(rows, orient="index", columns=labels, dtype=object)
    return Comparison(list(items), at, chosen, spec, results)
