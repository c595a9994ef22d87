"""Read one run folder or one preserved bundle into plain Python, tolerating missing pieces.

Runs and bundles share a layout, so `orch compare`, `orch plot`, the README generator and the
notebook API all read through this one module. It imports neither pandas nor matplotlib:
callers that want DataFrames build them from these lists. Metric records are flattened and
resolved as `orch check` does (`analysis.metrics`): `latent.f1`, not a nested `latent` dict.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from orchestrator.analysis.metrics import (MAX, direction, final_values, finite, flatten, is_number, metric_values,
                                           spec_directions)
from orchestrator.record.atomicio import read_json, read_jsonl
from orchestrator.errors import UserError
from orchestrator.record.paths import RunPaths

BUNDLE_META = "PRESERVED.json"  # written by `orch preserve` into the bundle's payload
LENGTH_KEY = re.compile(r"^val_ppl@(\d+(?:\.\d+)?)x$")


@dataclass
class RunData:
    """Everything a report or comparison needs from one run folder or bundle."""

    root: Path
    kind: str  # "run" | "bundle"
    label: str = ""

    def __post_init__(self) -> None:
        # A BagIt bundle (orch preserve) keeps the run's layout in its payload folder.
        if self.kind == "bundle" and (self.root / "bagit.txt").is_file() and (self.root / "data").is_dir():
            self.root = self.root / "data"

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.root)

    # -- documents ---------------------------------------------------------------------
    @cached_property
    def record(self) -> dict[str, Any]:
        rec = read_json(self.paths.run_json, default={})
        return rec if isinstance(rec, dict) else {}

    @cached_property
    def meta(self) -> dict[str, Any]:
        meta = read_json(self.root / BUNDLE_META, default={})
        return meta if isinstance(meta, dict) else {}

    @cached_property
    def spec(self) -> dict[str, Any]:
        import yaml

        try:
            data = yaml.safe_load(self.paths.spec.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    @cached_property
    def metrics(self) -> dict[str, Any]:
        m = read_json(self.paths.metrics, default={})
        return m if isinstance(m, dict) else {}

    @cached_property
    def history(self) -> list[dict[str, Any]]:
        """eval/metrics_history.jsonl, each record flattened (`latent.f1`)."""
        return [flatten(r) for r in read_jsonl(self.paths.metrics_history)]

    @cached_property
    def diagnostics(self) -> list[dict[str, Any]]:
        """logs/train_diagnostics.jsonl, each record flattened."""
        return [flatten(r) for r in read_jsonl(self.paths.diagnostics)]

    @cached_property
    def checks(self) -> dict[str, Any]:
        c = read_json(self.paths.checks, default={})
        return c if isinstance(c, dict) else {"results": c} if isinstance(c, list) else {}

    @cached_property
    def provenance(self) -> dict[str, Any]:
        p = read_json(self.paths.provenance, default={})
        return p if isinstance(p, dict) else {}

    # -- identity ----------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return str(self.record.get("run_id") or self.meta.get("run_id") or self.root.name)

    @property
    def name(self) -> str:
        return str(self.record.get("name") or self.spec.get("name") or self.meta.get("name") or self.root.name)

    @property
    def state(self) -> str:
        return str(self.record.get("state") or "UNKNOWN")

    @property
    def sweep_point(self) -> dict[str, Any]:
        sp = self.record.get("sweep_point")
        return sp if isinstance(sp, dict) else {}

    # -- metrics -----------------------------------------------------------------------
    def section(self, name: str) -> dict[str, Any]:
        s = self.metrics.get(name)
        return metric_values(s) if isinstance(s, Mapping) else {}

    def final(self, *, train: bool = True) -> dict[str, Any]:
        """Every metric's final value, exactly the bare names `orch check` sees: the newest
        train-diagnostics value (unless `train=False`), then history, then metrics.json."""
        return final_values(self.metrics, self.history, self.diagnostics if train else ())

    def best(self, metric: str | None = None) -> dict[str, Any]:
        """metrics.json `best`, else the history row where `metric` (default: the checkpoint's)
        was best by its direction; {} when the direction is unknown (see analysis.metrics)."""
        out = self.section("best")
        if out:
            return out
        key = metric or self._checkpoint_metric()
        way = direction(key, spec_directions(self.spec))
        rows = [r for r in self.history if finite(r.get(key))]
        if not rows or way is None:
            return {}
        return metric_values((max if way == MAX else min)(rows, key=lambda r: float(r[key])))

    def at_step(self, step: int) -> dict[str, Any]:
        """The last history row at or before `step` (an empty dict when none)."""
        rows = [r for r in self.history if is_number(r.get("step")) and r["step"] <= step]
        return metric_values(rows[-1]) if rows else {}

    def at(self, where: str) -> dict[str, Any]:
        if where == "best":
            return self.best()
        if where == "last":
            return self.final()
        if where.startswith("step="):
            try:
                return self.at_step(int(where[5:]))
            except ValueError:
                raise UserError(f"--at {where!r}: expected step=N with an integer N") from None
        raise UserError(f"--at {where!r}: use best, last or step=N")

    def _checkpoint_metric(self) -> str:
        ck = self.spec.get("checkpoint") or {}
        return str(ck.get("metric") or "val_loss") if isinstance(ck, dict) else "val_loss"

    def length_keys(self) -> list[tuple[float, str]]:
        """(multiple, key) for every `val_ppl@Nx` metric this run recorded, sorted."""
        keys: set[str] = set()
        for row in self.history[-1:] + [self.final(), self.best()]:
            keys.update(k for k in row if LENGTH_KEY.match(k))
        return sorted((float(LENGTH_KEY.match(k).group(1)), k) for k in keys)  # type: ignore[union-attr]


def is_bundle(path: Path) -> bool:
    """A bundle folder: a BagIt bag (orch preserve) or one of the layout before it."""
    return any((path / name).is_file() for name in ("bagit.txt", "MANIFEST.sha256", BUNDLE_META))


def open_source(ref: str, results: Path) -> RunData:
    """A run (id, prefix, name/run_id or folder) or a bundle folder, as RunData."""
    p = Path(ref)
    if p.is_dir() and is_bundle(p):
        return RunData(p, "bundle")
    if p.is_file() and p.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.zst")):
        raise UserError(f"{ref} is an archived bundle", hint="extract it first (tar xf), then pass the folder")
    from orchestrator.record.tree import ResultsRoot

    run = ResultsRoot(results).resolve(ref)
    return RunData(run.paths.root, "run")


def unique_labels(items: list[RunData]) -> None:
    """Label each item by name; where names repeat, add the sweep point or the run id."""
    names = [it.name for it in items]
    for it in items:
        label = it.name
        if names.count(it.name) > 1:
            if it.sweep_point:
                label += " (" + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in it.sweep_point.items()) + ")"
            else:
                label = it.run_id
        it.label = label
    seen: dict[str, int] = {}
    for it in items:  # still equal (same run twice, or a run and its bundle): number them
        seen[it.label] = seen.get(it.label, 0) + 1
        if seen[it.label] > 1:
            it.label = f"{it.label} #{seen[it.label]}"
