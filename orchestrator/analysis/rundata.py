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
from orchestrator.report.collect import logical_rows

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
    def train_rows(self) -> list[dict[str, Any]]:
        """The diagnostics as one logical run across attempts: the rows a resumed attempt rolled
        back (it restarted from an earlier checkpoint) are dropped (`report.collect.logical_rows`)."""
        return logical_rows(self.diagnostics)[0]

    @cached_property
    def eval_rows(self) -> list[dict[str, Any]]:
        """The metrics history as one logical run across attempts (see `train_rows`)."""
        return logical_rows(self.history)[0]

    @cached_property
    def attempt_starts(self) -> list[tuple[int, float]]:
        """(attempt, first step it logged) for every attempt after the first, from the `attempt`
        field the framework writes in each diagnostics/history row (else from a step going back)."""
        starts: dict[int, float] = {}
        for rows in (self.diagnostics, self.history):
            for b in logical_rows(rows)[1]:
                if is_number(b["attempt"]):
                    n = int(b["attempt"])
                    starts[n] = min(starts.get(n, b["step"]), b["step"])
        return sorted(starts.items())

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

    def at_step(self, step: float) -> dict[str, Any]:
        """The newest evaluation at or before `step`, with the newest train diagnostics at or
        before it (`loss`, `grad_norm`...) where the evaluation has no such key; its `step` is the
        evaluation's (the diagnostics' step alone when nothing was evaluated by then); {} when none."""
        evals = [r for r in self.eval_rows if r["step"] <= step]
        train = [r for r in self.train_rows if r["step"] <= step]
        if not evals and not train:
            return {}
        at = evals[-1]["step"] if evals else train[-1]["step"]
        train = [r for r in train if r["step"] <= at]
        return {**(metric_values(train[-1]) if train else {}), **(metric_values(evals[-1]) if evals else {})}

    def at(self, where: str) -> dict[str, Any]:
        """The metrics at `best` (with the train diagnostics of that step), `last` or `step=N`
        (the newest record at or before N: `at_step`)."""
        if where == "best":
            best = self.best()
            if not is_number(best.get("step")):
                return best
            return {**self.at_step(best["step"]), **best}
        if where == "last":
            return self.final()
        return self.at_step(parse_at_step(where))

    def _checkpoint_metric(self) -> str:
        ck = self.spec.get("checkpoint") or {}
        return str(ck.get("metric") or "val_loss") if isinstance(ck, dict) else "val_loss"

    def length_keys(self) -> list[tuple[float, str]]:
        """(multiple, key) for every `val_ppl@Nx` metric this run recorded, sorted."""
        keys: set[str] = set()
        for row in self.history[-1:] + [self.final(), self.best()]:
            keys.update(k for k in row if LENGTH_KEY.match(k))
        return sorted((float(LENGTH_KEY.match(k).group(1)), k) for k in keys)  # type: ignore[union-attr]


def parse_at_step(where: str) -> int:
    """N of `--at step=N`; a UserError for anything else (best and last are the caller's)."""
    if not where.startswith("step="):
        raise UserError(f"--at {where!r}: use best, last or step=N")
    try:
        step = int(where[5:])
    except ValueError:
        raise UserError(f"--at {where!r}: expected step=N with an integer N") from None
    if step < 0:
        raise UserError(f"--at {where!r}: the step must be >= 0")
    return step


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
