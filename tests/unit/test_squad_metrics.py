"""SQuAD EM/F1 pinned against hand-worked cases (the official v2.0 evaluation script's rules)."""
from __future__ import annotations

import pytest

from trainers.latentwire.squad_metrics import exact_match, f1, gold_answers, normalize_answer, score, squad_scores


def test_normalization_lowercases_strips_punctuation_articles_and_whitespace() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear & the plum.") == "apple pear plum"
    assert normalize_answer("  Theory\tof\nrelativity ") == "theory of relativity"
    # articles only as whole words: "other" and "anthem" keep their letters
    assert normalize_answer("the other anthem") == "other anthem"
    # punctuation goes before articles are matched: "the-end" -> "theend" (one word, kept)
    assert normalize_answer("the-end") == "theend"


def test_exact_match_after_normalization() -> None:
    assert exact_match("The Normans", "normans") == 1.0
    assert exact_match("1185", "in 1185") == 0.0


def test_f1_hand_worked() -> None:
    # gold -> "denmark iceland and norway" (4 tokens), prediction -> "iceland and norway" (3, all shared):
    # precision 3/3, recall 3/4 -> F1 6/7
    assert f1("Denmark, Iceland and Norway", "Iceland and Norway") == pytest.approx(6 / 7)
    assert f1("in 1185", "1185") == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P 1, R 1/2 -> 2/3
    assert f1("Rollo", "William the Conqueror") == 0.0
    # repeated tokens count as a multiset: "the the" style duplicates only match as often as they occur
    assert f1("new york new york", "new york") == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_several_gold_answers_take_the_maximum() -> None:
    em, f = score(["Alexius Komnenos", "Komnenos", "the emperor Alexius"], "Alexius")
    assert em == 0.0
    # vs "alexius komnenos": P 1, R 1/2 -> 2/3; vs "emperor alexius": P 1, R 1/2 -> 2/3; vs "komnenos": 0
    assert f == pytest.approx(2 / 3)
    em, f = score(["1185", "in 1185"], "In 1185.")
    assert (em, f) == (1.0, 1.0)


def test_empty_prediction_and_unanswerable_questions() -> None:
    assert f1("Normandy", "") == 0.0 and exact_match("Normandy", "") == 0.0
    assert gold_answers([]) == [""] and gold_answers(["", "  "]) == [""]
    assert score([], "") == (1.0, 1.0)  # unanswerable, abstained: right
    assert score([], "Normandy") == (0.0, 0.0)  # unanswerable, answered: wrong
    assert f1("the", "a") == 1.0  # both empty after normalization: official rule gives 1


def test_corpus_scores_are_percentages() -> None:
    out = squad_scores([["Paris"], ["in 1185", "1185"], ["Rollo"]], ["paris", "1185", ""])
    assert out["em"] == pytest.approx(200 / 3)
    assert out["f1"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError):
        squad_scores([["a"]], [])
