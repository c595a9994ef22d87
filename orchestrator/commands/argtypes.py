"""Range-checked argparse types: every numeric option says what it accepts.

`type=seconds(0.1, 86400)` and the like raise `argparse.ArgumentTypeError`, which the CLI's
parser turns into a usage error (exit 2) naming the option and the accepted range, so
`--watch -1` or `--lines 1e40` never reach a command.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _show(x: float, kind: type) -> str:
    return f"{int(x):,}" if kind is int else f"{x:g}"


def bounded(kind: type, lo: float, hi: float, what: str = "") -> Callable[[str], float]:
    """An argparse type: a `kind` (int or float) within [lo, hi]."""

    def parse(text: str) -> float:
        value = _number(text, kind)
        if not lo <= value <= hi:
            unit = f" {what}" if what else ""
            raise argparse.ArgumentTypeError(f"expected {_show(lo, kind)} to {_show(hi, kind)}{unit}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def checked(cast: Callable[[str], float], ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type for ranges `bounded` does not express (open ends, no upper limit):
    `cast(text)`, rejected unless finite and `ok`, the message saying `expected`."""
    def parse(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = cast.__name__  # argparse names the type in its own messages
    return parse


def seconds(lo: float = 0.1, hi: float = 7 * 86400) -> Callable[[str], float]:
    """An interval in seconds (default: 0.1 s to a week)."""
    return bounded(float, lo, hi, "seconds")


def count(lo: int = 0, hi: int = 10**9) -> Callable[[str], float]:
    """A whole number within [lo, hi]."""
    return bounded(int, lo, hi)
