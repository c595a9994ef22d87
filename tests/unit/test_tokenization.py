"""Tokenizers of the `lm` trainer: char (nanoGPT), byte-level BPE (tokenizers), pretrained (AutoTokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.lm.config import TokenizerSpec
from trainers.lm.tokenization import CharTokenizer, build_tokenizer, load_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / "input.txt"
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def _shakespeare() -> str:
    if not SHAKESPEARE.exists():
        pytest.skip(f"Tiny Shakespeare is not at {SHAKESPEARE} (the shared data folder is absent)")
    return SHAKESPEARE.read_text(encoding="utf-8")


def test_char_tokenizer_on_tiny_shakespeare_has_65_chars_and_round_trips():
    text = _shakespeare()
    tok = build_tokenizer(TokenizerSpec(type="char"), text, None)
    assert tok.kind == "char" and tok.vocab_size == 65 and tok.eos_id is None
    assert tok.chars == sorted(set(text))  # nanoGPT's stoi: sorted unique characters
    ids = tok.encode(text)
    assert len(ids) == len(text) and max(ids) == 64
    assert tok.decode(ids) == text


def test_char_tokenizer_saves_and_reloads(tmp_path: Path):
    tok = build_tokenizer(TokenizerSpec(type="char"), TEXT, tmp_path / "tokenizer")
    again = load_tokenizer(tmp_path / "tokenizer")
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars
    assert again.encode("hear me speak") == tok.encode("hear me speak")


def test_char_tokenizer_drops_unknown_characters_with_a_warning():
    tok = CharTokenizer.from_text("abc")
    with pytest.warns(UserWarning, match="not in the vocabulary"):
        assert tok.decode(tok.encode("aXbZc")) == "abc"


def test_bpe_has_the_configured_vocab_size_eos_and_lossless_round_trip(tmp_path: Path):
    tok = build_tokenizer(TokenizerSpec(type="bpe", vocab_size=300), TEXT, tmp_path / "tok")
    assert tok.kind == "bpe" and tok.vocab_size == 300
    assert tok.decode([tok.eos_id]) == "<|endoftext|>"
    unseen = "naïve 東京 ünïcödé \t tabs and emoji 🚀"  # byte-level: nothing is unknown
    assert tok.decode(tok.encode(unseen)) == unseen
    assert len(tok.encode("Speak, speak.")) < len("Speak, speak.")  # merges learned from the text


def test_bpe_learns_merges_from_the_given_text_only():
    tok = build_tokenizer(TokenizerSpec(type="bpe", vocab_size=400), TEXT, None)
    # Words of the training text become single tokens; a word that never occurred does not.
    assert len(tok.encode(" Citizen")) == 1
    assert len(tok.encode(" xylophone")) > 3


def test_bpe_folder_reloads_with_orch_and_with_autotokenizer(tmp_path: Path):
    from transformers import AutoTokenizer

    tok = build_tokenizer(TokenizerSpec(type="bpe", vocab_size=300), TEXT, tmp_path / "tok")
    sample = "Before we proceed, hear me."
    assert load_tokenizer(tmp_path / "tok").encode(sample) == tok.encode(sample)
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert hf.encode(sample, add_special_tokens=False) == tok.encode(sample)
    assert hf.eos_token_id == tok.eos_id


def test_pretrained_tokenizer_loads_a_local_folder(tmp_path: Path):
    build_tokenizer(TokenizerSpec(type="bpe", vocab_size=300), TEXT, tmp_path / "hub_like")
    cfg = TokenizerSpec(type="pretrained", name_or_path=str(tmp_path / "hub_like"))
    tok = build_tokenizer(cfg, "ignored", tmp_path / "saved")
    assert tok.kind == "pretrained" and tok.vocab_size == 300
    again = load_tokenizer(tmp_path / "saved")
    assert again.kind == "pretrained" and again.encode("speak") == tok.encode("speak")


def test_unknown_tokenizer_type_is_rejected():
    with pytest.raises(ValueError, match="unknown tokenizer.type"):
        build_tokenizer({"type": "wordpiece"}, TEXT, None)


def test_text_chunks_are_the_same_for_the_whole_string_and_any_pieces_of_it():
    import random

    from trainers.lm.tokenization import text_chunks

    text = "".join(random.Random(0).choice(["ab", "c\n", "\n\n", "defgh ", "\n"]) for _ in range(5000))
    whole = list(text_chunks(text, 997))
    assert "".join(whole) == text and all(len(c) <= 997 for c in whole) and len(whole) > 10
    for seed in range(3):
        rng, pieces, i = random.Random(seed), [], 0
        while i < len(text):
            n = rng.choice([0, 1, 50, 3000])
            pieces.append(text[i : i + n])
            i += n
        assert list(text_chunks(iter(pieces), 997)) == whole


def test_document_chunks_encode_to_the_ids_of_the_whole_document():
    from trainers.lm.tokenization import document_chunks

    tok = build_tokenizer(TokenizerSpec(type="bpe", vocab_size=300), TEXT, None)
    doc = (TEXT + "  indented\n\n\nx\n \n") * 30
    chunks = list(document_chunks([doc], 500))
    assert "".join(chunks) == doc and len(chunks) > 20
    assert [i for ids in tok.encode_batch(chunks) for i in ids] == tok.encode(doc)


def test_char_encode_arrays_equal_encode():
    tok = CharTokenizer.from_text(iter(["hello ", "wörld\n", "✓"]))
    assert tok.chars == sorted(set("hello wörld\n✓"))
    assert [a.tolist() for a in tok.encode_arrays(["hello", "✓ wörld", ""])] == [tok.encode("hello"), tok.encode("✓ wörld"), []]
    with pytest.warns(UserWarning):
        assert tok.encode_arrays(["hex"])[0].tolist() == tok.encode("he")  # unknown characters dropped, as encode
