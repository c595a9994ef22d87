"""Small corpora that ship with orch, so the quickstart trains offline on a fresh install.

They are generated (deterministically, from a fixed seed) rather than stored: no data
files to package, no licence question, and a structure simple enough that a tiny
model's validation loss falls visibly within a few dozen CPU steps.

    data: {builtin: grammar}      # short English-like sentences from a toy grammar
    data: {builtin: arith}        # lines like "17+5=22" (also: arithmetic)
"""

from __future__ import annotations

import random
from collections.abc import Callable

VERSION = 2  # bump when a generator's output changes, so cached tokenizations are rebuilt

_SUBJECTS = ["the cat", "the dog", "a bird", "the king", "a child", "the queen", "my friend", "the old man"]
_VERBS = ["sees", "likes", "finds", "holds", "wants", "watches", "follows", "helps"]
_ADJECTIVES = ["red", "small", "happy", "quiet", "bright", "old", "green", "brave"]
_OBJECTS = ["ball", "house", "tree", "river", "book", "garden", "horse", "song"]
_PLACES = ["in the park", "at home", "by the sea", "near the hill", "in the town", "under the moon"]


def _sentence(rng: random.Random) -> str:
    subject, verb = rng.choice(_SUBJECTS), rng.choice(_VERBS)
    obj = f"{rng.choice(['a', 'the'])} {rng.choice(_ADJECTIVES)} {rng.choice(_OBJECTS)}"
    tail = f" {rng.choice(_PLACES)}" if rng.random() < 0.5 else ""
    return f"{subject} {verb} {obj}{tail}."


def grammar(n_chars: int = 300_000, seed: int = 1337) -> str:
    """Paragraphs of toy-grammar sentences, one paragraph per line."""
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < n_chars:
        line = " ".join(_sentence(rng) for _ in range(rng.randint(2, 5)))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


def arithmetic(n_chars: int = 300_000, seed: int = 1337, max_operand: int = 19) -> str:
    """Additions and subtractions of small numbers, one per line ("17+5=22", "12-9=3").

    Operands up to 19 keep the random part of each line small, so a 2-layer model gets
    from 2.7 to about 1.35 validation loss in 300 steps (operands up to 99 stall near 1.7).
    """
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < n_chars:
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        line = f"{a}+{b}={a + b}" if rng.random() < 0.5 else f"{max(a, b)}-{min(a, b)}={abs(a - b)}"
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


BUILTIN_CORPORA: dict[str, Callable[[], str]] = {"arith": arithmetic, "arithmetic": arithmetic, "grammar": grammar}


def builtin_text(name: str) -> str:
    """The full text of a builtin corpus (the caller splits it into train and validation)."""
    try:
        return BUILTIN_CORPORA[name]()
    except KeyError:
        raise ValueError(f"unknown builtin corpus {name!r}; available: {sorted(BUILTIN_CORPORA)}") from None
