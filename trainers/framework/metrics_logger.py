"""Where a trainer's numbers go: JSONL metric files, a plain text log, a progress bar on terminals.

Only the main process writes (the others get no-op writers), so a 2-process run logs one line per
step, not two. JSONL lines are appended with one write() each (see `orchestrator.record.atomicio`), so a
run killed mid-line leaves a file readers still parse.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Optional

from orchestrator.record.atomicio import append_jsonl
from orchestrator.record.paths import RunPaths


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    """Tensors to numbers (exact: resume checks compare them); NaN -> null and inf -> "inf" so the JSON stays standard."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None if math.isnan(v) else str(v)
        out[k] = v
    return out


class MetricsLogger:
    """The run's metric files: `logs/train_diagnostics.jsonl`, `eval/metrics_history.jsonl`, `logs/training.log`."""

    def __init__(self, paths: RunPaths, is_main: bool = True, total_steps: Optional[int] = None,
                 progress: Optional[bool] = None) -> None:
        self.paths = paths
        self.is_main = is_main
        self._bar: Any = None
        if is_main:
            for d in (paths.logs, paths.eval):
                d.mkdir(parents=True, exist_ok=True)
            show = sys.stderr.isatty() if progress is None else progress
            if show:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)

    def train(self, record: dict[str, Any]) -> None:
        """One line of `train_diagnostics.jsonl` (every `log_every` steps)."""
        if self.is_main:
            append_jsonl(self.paths.diagnostics, _clean({"time": time.time(), **record}))

    def eval(self, record: dict[str, Any]) -> None:
        """One line of `metrics_history.jsonl` (every evaluation)."""
        if self.is_main:
            append_jsonl(self.paths.metrics_history, _clean({"time": time.time(), **record}))

    def text(self, line: str) -> None:
        """A plain line in `logs/training.log` (and through the progress bar when there is one)."""
        if not self.is_main:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.paths.training_log, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)

    def progress(self, step: int, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.n = step
            if postfix:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                      refresh=False)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
