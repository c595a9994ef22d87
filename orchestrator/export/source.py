"""One run as the exporters see it: scalars with steps, the flattened spec, and descriptive tags.

Scalars come from the run's two metric files read as one logical run across requeued attempts
(`orchestrator.report.collect.logical_rows`): `train/<key>` from logs/train_diagnostics.jsonl and
`eval/<key>` from eval/metrics_history.jsonl, keys made acceptable to both tools (`val_ppl@2x` ->
`val_ppl_at_2x`). The spec and provenance are redacted before anything leaves the results tree.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional

from orchestrator.errors import UserError
from orchestrator.record.atomicio import read_json
from orchestrator.report import collect


def need(module: str, extra: str) -> Any:
    """Import an optional dependency, or a usage error naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{module} is not installed ({exc.msg})",
                        hint=f"install the extra: pip install 'orch[{extra}]' (or pip install {extra})") from None


@dataclass
class Source:
    """A refreshed run (a `RunView` from orchestrator.lifecycle.refresh) to export."""

    view: Any

    @property
    def paths(self) -> Any:
        return self.view.run.paths

    @property
    def run_id(self) -> str:
        return str(self.view.run.run_id)

    @property
    def group(self) -> str:
        return str(self.paths.group)

    @property
    def state(self) -> str:
        return str(self.view.state)

    @cached_property
    def scalars(self) -> dict[str, list[tuple[int, float, Optional[float]]]]:
        """{"train/loss": [(step, value, wall time)], "eval/val_loss": [...]}, one logical run."""
        data = collect.read_series(self.paths)
        out: dict[str, list[tuple[int, float, Optional[float]]]] = {}
        for src in ("train", "eval"):
            for key, points in data[src].items():
                out[f"{src}/{collect.metric_name(key)}"] = points
        return out

    @cached_property
    def spec(self) -> dict[str, Any]:
        return collect.scrub(collect.read_spec(self.paths))

    @cached_property
    def hparams(self) -> dict[str, Any]:
        """The resolved spec, flattened (`train.lr`), values as bool, number or string (lists as JSON)."""
        from orchestrator.analysis.rundata import flatten

        out: dict[str, Any] = {}
        for k, v in flatten(self.spec).items():
            if isinstance(v, (bool, int, float, str)):
                out[k] = v
            elif v is None:
                out[k] = "null"
            else:
                out[k] = json.dumps(collect.scrub(v), default=str)
        return out

    @cached_property
    def provenance(self) -> dict[str, Any]:
        p = read_json(self.paths.fast("provenance"), default={})
        return collect.scrub(p) if isinstance(p, dict) else {}

    @property
    def failure_class(self) -> Optional[str]:
        f = self.view.failure or self.view.record.get("failure") or {}
        return f.get("class") if isinstance(f, dict) else None

    def tags(self) -> dict[str, str]:
        """What describes the run besides its numbers: state, attempts, failure class, git commit."""
        rec = self.view.record
        git = self.provenance.get("git") if isinstance(self.provenance.get("git"), dict) else {}
        tags = {
            "orch.run_id": self.run_id,
            "orch.name": self.group,
            "orch.state": self.state,
            "orch.attempts": str(len(rec.get("attempts") or [])),
            "orch.failure_class": self.failure_class,
            "orch.stop_reason": rec.get("stop_reason"),
            "orch.backend": rec.get("backend"),
            "orch.sweep_id": rec.get("sweep_id"),
            "orch.run_dir": self.paths.dir,
            "git.commit": git.get("commit"),
            "git.branch": git.get("branch"),
            "git.dirty": None if git.get("dirty") is None else str(bool(git.get("dirty"))).lower(),
        }
        return {k: collect.scrub_text(str(v)) for k, v in tags.items() if v not in (None, "")}

    @property
    def created(self) -> Optional[float]:
        rec = self.view.record
        ns = rec.get("created_ns")
        return ns / 1e9 if isinstance(ns, int) else collect.iso_epoch(rec.get("created_at"))

    @property
    def ended(self) -> Optional[float]:
        return collect.iso_epoch(self.view.record.get("ended_at")) if self.view.state.terminal else None
