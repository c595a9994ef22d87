"""Preemption and time-limit signals: set a flag, let the loop stop at the next step boundary.

The handler itself does nothing but record the signal (a checkpoint written from inside a signal
handler could interleave with an optimizer step). The loop polls `requested`, saves a checkpoint,
records `stop_reason: "preempted: SIGUSR1"` and exits with `EXIT_REQUEUE` (75) so the backend
requeues the run. The signal is configurable (`resources.signal`) because some clusters' NCCL
builds install their own SIGUSR1 handler; SIGTERM (what `scancel` and Kubernetes send) is always
handled too.
"""
from __future__ import annotations

import signal
import types
from typing import Any, Callable, Iterable, Optional, Union


def signal_number(name: str) -> signal.Signals:
    """`"USR1"`, `"SIGUSR1"` or `"usr1"` -> signal.SIGUSR1."""
    upper = name.upper()
    return signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"]


class PreemptionHandler:
    """Install flag-setting handlers for `names`; `restore()` puts the previous handlers back."""

    def __init__(self, names: Iterable[str] = ("USR1", "TERM")) -> None:
        self.signals = sorted({signal_number(n) for n in names})
        self.received: Optional[signal.Signals] = None
        self._previous: dict[signal.Signals, Union[Callable[..., Any], int, None]] = {}

    def install(self) -> "PreemptionHandler":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Optional[types.FrameType]) -> None:
        if self.received is None:  # keep the first one: it is the reason
            self.received = signal.Signals(signum)

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def reason(self) -> str:
        return f"preempted: {self.received.name}" if self.received is not None else ""

    def restore(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()
