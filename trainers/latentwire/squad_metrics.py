"""SQuAD exact match and F1, as the official v2.0 evaluation script computes them.

Why a copy of the official rules and not a library call: the numbers must compare with published
SQuAD results, so normalization is exactly theirs (lowercase, drop punctuation, drop the articles
a/an/the, collapse whitespace), F1 is over normalized whitespace tokens with multiset overlap, and
each question scores the maximum over its gold answers. An unanswerable (v2.0) question has the
single gold answer "" and scores 1 only for an empty prediction.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, remove punctuation, remove articles, collapse whitespace (official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def f1(gold: str, prediction: str) -> float:
    """Token-overlap F1; when either side is empty after normalization, 1 only if both are."""
    gold_toks, pred_toks = _tokens(gold), _tokens(prediction)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Iterable[str]) -> list[str]:
    """The answers that survive normalization, or [""] for an unanswerable question (official v2.0)."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def score(golds: Sequence[str], prediction: str) -> tuple[float, float]:
    """(EM, F1) of one prediction: the maximum over its gold answers."""
    golds = gold_answers(golds)
    return max(exact_match(g, prediction) for g in golds), max(f1(g, prediction) for g in golds)


def squad_scores(golds: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """{"em": ..., "f1": ...} in percent over questions (the scale SQuAD results are reported in)."""
    if len(golds) != len(predictions):
        raise ValueError(f"{len(golds)} gold answer lists but {len(predictions)} predictions")
    if not predictions:
        return {"em": 0.0, "f1": 0.0}
    pairs = [score(g, p) for g, p in zip(golds, predictions)]
    return {"em": 100.0 * sum(e for e, _ in pairs) / len(pairs), "f1": 100.0 * sum(f for _, f in pairs) / len(pairs)}
