"""Plain-text tables that fit a width: columns kept by priority, the flexible one truncated.

`fit()` lays out rows so that no line is longer than `width`: a table that is too wide first
shrinks its flexible columns (the NOTE) to a comfortable width, then drops the optional columns
least important first, then shrinks the flexible columns further and, last, truncates the other
text cells; whatever width is left over goes back to the flexible columns. Required columns are
never dropped. Cells cut short end in `~`, so a truncated value never passes for a whole one.
No dependency: `orch status` stays fast and the same layout serves the live views.

`width_for()` is the width to fit: the terminal's on a terminal, else `$COLUMNS`, else
PIPE_WIDTH (120) for output that goes to a pipe or a file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TextIO

PIPE_WIDTH = 120  # piped output without $COLUMNS: wide enough for a log, narrow enough to read
MIN_WIDTH = 40
SEP = "  "
CUT = "~"


@dataclass(frozen=True)
class Column:
    """One column. `priority`: lower is more important (dropped last); `required` columns are never
    dropped; a `flex` column takes the width left over and is truncated first (down to `soft`, then
    to `min_width`); `right` aligns numbers."""

    header: str
    priority: int = 0
    required: bool = False
    flex: bool = False
    right: bool = False
    min_width: int = 3
    soft: int = 24


def width_for(stream: TextIO) -> int:
    """The width to fit: the terminal's (resized windows included), else `$COLUMNS`, else
    PIPE_WIDTH; never below MIN_WIDTH."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    env = os.environ.get("COLUMNS", "")
    width = 0
    if tty:
        try:
            width = os.get_terminal_size(stream.fileno()).columns
        except (OSError, ValueError):
            width = 0
    if not width:
        width = int(env) if env.isdigit() and int(env) > 0 else PIPE_WIDTH
    return max(MIN_WIDTH, width)


def cut(text: str, width: int) -> str:
    """`text` in at most `width` characters, marked with `~` when cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    return text[: width - 1] + CUT


def layout(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int, sep: str = SEP
           ) -> tuple[list[int], list[int]]:
    """(indices of the columns kept, in order; their widths) for `rows` in `width` characters."""
    natural = [max([len(c.header)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    keep = list(range(len(columns)))
    widths = dict(enumerate(natural))

    def total() -> int:
        return sum(widths[i] for i in keep) + len(sep) * (len(keep) - 1)

    def shrink_flex(floor: str) -> None:
        for i in keep:
            c = columns[i]
            if c.flex and total() > width:
                lowest = max(len(c.header), c.soft if floor == "soft" else c.min_width)
                widths[i] = max(min(natural[i], lowest), widths[i] - (total() - width))

    shrink_flex("soft")
    # optional columns, least important first, until the table fits with flexible columns at `soft`
    for i in sorted((i for i in keep if not columns[i].required), key=lambda i: (-columns[i].priority, -i)):
        if total() <= width:
            break
        keep.remove(i)
    shrink_flex("min")
    # still too wide: truncate the widest non-flexible text cells, never below their header or min_width
    while total() > width:
        shrinkable = [i for i in keep if widths[i] > max(len(columns[i].header), columns[i].min_width)]
        if not shrinkable:
            break
        i = max(shrinkable, key=lambda i: widths[i])
        widths[i] -= 1
    # width left over goes back to the flexible columns (up to their natural width)
    for i in sorted(keep, key=lambda i: (not columns[i].required, columns[i].priority)):
        if columns[i].flex and total() < width:
            widths[i] = min(natural[i], widths[i] + width - total())
    return keep, [widths[i] for i in keep]


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int,
        header: bool = True) -> list[str]:
    """The table's lines (header first), none longer than `width` characters. Columns are two spaces
    apart, or one when that keeps more of them."""
    sep = SEP
    keep, widths = layout(columns, rows, width, sep)
    if len(keep) < len(columns):
        tight = layout(columns, rows, width, " ")
        if len(tight[0]) > len(keep):
            sep, (keep, widths) = " ", tight
    lines = []
    for r in ([[c.header for c in columns]] if header else []) + [list(r) for r in rows]:
        cells = []
        for i, w in zip(keep, widths):
            text = cut(str(r[i]), w)
            cells.append(text.rjust(w) if columns[i].right else text.ljust(w))
        lines.append(sep.join(cells).rstrip()[:width])
    return lines


def shortest_unique_suffixes(ids: Sequence[str], minimum: int = 4) -> dict[str, str]:
    """Each id's shortest suffix (at least `minimum` characters) that no other id ends with, like
    git's short hashes from the other end: run ids differ in their trailing time and random part."""
    out: dict[str, str] = {}
    unique = sorted(set(ids))
    if not unique:
        return out
    longest = max(len(i) for i in unique)
    for n in range(minimum, longest + 1):
        counts: dict[str, int] = {}
        for i in unique:
            if i not in out:
                counts[i[-n:]] = counts.get(i[-n:], 0) + 1
        for i in unique:
            # an id that is itself a suffix of a longer one has no unique suffix but itself
            if i not in out and (counts.get(i[-n:]) == 1 or n >= len(i)):
                out[i] = i[-n:]
        if len(out) == len(unique):
            break
    return out
