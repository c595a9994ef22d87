"""`orchestrator.load(path)`: runs, metrics history and diagnostics as pandas DataFrames.

Why: every analysis notebook began by re-parsing run folders by hand. `path` may be a results
root, one run folder, one bundle, or a folder of bundles (preserved_data/); all read the same
way through `rundata`, and every row carries `run_id` and `name` so tables join cleanly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from orchestrator.errors import UserError
from orchestrator.analysis.metrics import flatten, is_number
from orchestrator.analysis.rundata import RunData, is_bundle


@dataclass
class Loaded:
    """`.runs` (one row per run), `.history` and `.diagnostics` (one row per logged step)."""

    runs: Any
    history: Any
    diagnostics: Any
    items: list[RunData]

    def __repr__(self) -> str:
        return (f"Loaded({len(self.runs)} runs, {len(self.history)} history rows, "
                f"{len(self.diagnostics)} diagnostics rows)")


def _discover(path: Path) -> Iterator[RunData]:
    if is_bundle(path):
        yield RunData(path, "bundle")
        return
    if (path / "run.json").is_file():
        yield RunData(path, "run")
        return
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_bundle(child):
            yield RunData(child, "bundle")
        elif (child / "run.json").is_file():
            yield RunData(child, "run")
        else:  # results/<name>/<run_id>/
            for grand in sorted(p for p in child.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (grand / "run.json").is_file() or is_bundle(grand):
                    yield RunData(grand, "bundle" if is_bundle(grand) else "run")


def _run_row(d: RunData) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": d.run_id, "name": d.name, "kind": d.kind, "state": d.state,
                           "path": str(d.root), "created_at": d.record.get("created_at"),
                           "attempts": len(d.record.get("attempts") or []),
                           "failure_class": (d.record.get("failure") or {}).get("class")
                           if isinstance(d.record.get("failure"), dict) else None}
    row.update({f"sweep.{k}": v for k, v in d.sweep_point.items()})
    for section in ("final", "best"):
        values = d.final() if section == "final" else d.best()
        row.update({f"{section}.{k}": v for k, v in values.items() if is_number(v) or isinstance(v, str)})
    from orchestrator.spec.sections import Spec

    for key in ["train"] + [k for k in d.spec if k not in Spec.model_fields]:  # and the trainer's own sections
        block = d.spec.get(key)
        if isinstance(block, dict):
            row.update({f"spec.{key}.{k}": v for k, v in flatten(block).items()
                        if isinstance(v, (int, float, str, bool)) or v is None})
    return row


def load(path: Any = "results") -> Loaded:
    """Load a results root, run folder, bundle or folder of bundles into DataFrames."""
    import pandas as pd

    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder (give a results root, a run folder or a bundle)")
    items = list(_discover(root))
    runs = pd.DataFrame([_run_row(d) for d in items])
    hist, diag = [], []
    for d in items:
        ident = {"run_id": d.run_id, "name": d.name}
        hist += [{**ident, **r} for r in d.history]
        diag += [{**ident, **r} for r in d.diagnostics]
    return Loaded(runs, pd.DataFrame(hist), pd.DataFrame(diag), items)
