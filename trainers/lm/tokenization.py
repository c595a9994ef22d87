"""Tokenizers for the `lm` trainer: character-level, byte-level BPE, or any pretrained one.

All three sit behind one small interface (`TextTokenizer`) so the data pipeline,
the trainer and generation never care which kind a run uses. `bpe` and
`pretrained` are Hugging Face fast tokenizers and are saved in Hugging Face format,
so a run's `tokenizer/` folder loads with `AutoTokenizer.from_pretrained` too.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

META_FILE = "orch_tokenizer.json"  # written next to the tokenizer files; says which kind to reload
CHAR_VOCAB_FILE = "char_vocab.json"  # not vocab.json: that name means a GPT-2 vocabulary to AutoTokenizer
EOS_TOKEN = "<|endoftext|>"  # GPT-2's end-of-text token, used by the byte-level BPE we train
CHUNK_CHARS = 1 << 20  # longest piece of text handed to the tokenizer at once (see `text_chunks`)
_MAX_CODEPOINT = 0x10FFFF


def _opt(cfg: Any, name: str, default: Any = None) -> Any:
    """Read a field from a pydantic model, a namespace or a plain dict."""
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


class TextTokenizer:
    """What the trainer needs from a tokenizer: ids in, ids out, a vocabulary size, and saving."""

    kind: str = "base"

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def eos_id(self) -> int | None:
        return None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts; subclasses override this with something faster."""
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode_batch` as integer arrays (what the token cache writes); subclasses skip the Python lists."""
        return [np.asarray(ids, dtype=np.int64) for ids in self.encode_batch(texts)]

    def save(self, dir: Path) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class CharTokenizer(TextTokenizer):
    """nanoGPT's shakespeare_char tokenizer: one id per character, sorted vocabulary."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self._warned = False
        self._lut: np.ndarray | None = None  # code point -> id (-1: not in the vocabulary), built on first use

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> CharTokenizer:
        """The sorted characters of `text` (one string or a stream of pieces)."""
        seen = np.zeros(_MAX_CODEPOINT + 1, dtype=bool)
        extra: set[str] = set()  # characters UTF-32 cannot encode (lone surrogates)
        for piece in [text] if isinstance(text, str) else text:
            codes = _codepoints(piece)
            if codes is None:
                extra.update(piece)
            else:
                seen[codes] = True
        chars = {chr(c) for c in np.flatnonzero(seen)} | extra
        return cls(sorted(chars))  # sorted by code point, as nanoGPT's sorted(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        # Unknown characters (e.g. in a typed prompt) are dropped with a warning instead of crashing
        # an interactive session; the training data never has any, the vocabulary is built from it.
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in stoi})
            if not self._warned:
                warnings.warn(f"characters not in the vocabulary were dropped: {unknown!r}", stacklevel=2)
                self._warned = True
            return [stoi[c] for c in text if c in stoi]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One table look-up per character in numpy (the same ids as `encode`, ~100x faster)."""
        if self._lut is None:
            codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
            self._lut = np.full(int(codes.max(initial=0)) + 2, -1, dtype=np.int32)  # last slot: any larger code
            self._lut[codes] = np.arange(len(codes), dtype=np.int32)
        out = []
        for text in texts:
            codes = _codepoints(text)
            ids = None if codes is None else self._lut[np.minimum(codes, len(self._lut) - 1)]
            if ids is None or (len(ids) and ids.min() < 0):  # unknown characters: drop them as `encode` does
                ids = np.asarray(self.encode(text), dtype=np.int32)
            out.append(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)

    def save(self, dir: Path) -> None:
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        (dir / CHAR_VOCAB_FILE).write_text(json.dumps({"chars": self.chars}, ensure_ascii=False), encoding="utf-8")
        _write_meta(dir, self.kind)


class HFTokenizer(TextTokenizer):
    """A Hugging Face tokenizer (our trained BPE or a pretrained one)."""

    def __init__(self, hf_tokenizer: Any, kind: str):
        self.hf = hf_tokenizer
        self.kind = kind
        self._fast = getattr(hf_tokenizer, "backend_tokenizer", None) if hf_tokenizer.is_fast else None

    @property
    def vocab_size(self) -> int:
        # len() counts added special tokens too, which `vocab_size` of HF tokenizers leaves out.
        return len(self.hf)

    @property
    def eos_id(self) -> int | None:
        return self.hf.eos_token_id

    def encode(self, text: str) -> list[int]:
        if self._fast is not None:
            return self._fast.encode(text, add_special_tokens=False).ids
        return self.hf.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The Rust backend encodes a batch on all cores and never warns about model_max_length.
        if self._fast is not None:
            return [e.ids for e in self._fast.encode_batch(list(texts), add_special_tokens=False)]
        return [self.hf.encode(t, add_special_tokens=False) for t in texts]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        # encode_batch_fast: the same ids without tracking character offsets (tokenizers >= 0.20).
        fast = getattr(self._fast, "encode_batch_fast", None)
        if fast is None:
            return super().encode_arrays(texts)
        return [np.asarray(e.ids, dtype=np.int64) for e in fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, dir: Path) -> None:
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(dir))
        _write_meta(dir, self.kind)


def _write_meta(dir: Path, kind: str) -> None:
    (dir / META_FILE).write_text(json.dumps({"kind": kind}) + "\n")


def _codepoints(text: str) -> np.ndarray | None:
    """The code points of `text` as an array; None when it holds lone surrogates (not encodable)."""
    try:
        return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    except UnicodeEncodeError:
        return None


def _after_last_newline(buf: str, start: int, limit: int) -> int | None:
    newline = buf.rfind("\n", start, limit)
    return newline + 1 if newline > start else limit


def _before_safe_newline(buf: str, start: int, limit: int) -> int | None:
    """The last cut in (start, limit] just before a newline that follows a non-space character.

    Byte-level BPE (GPT-2's pre-tokenizer pattern) never joins such a newline with what precedes
    it, and restarts its pattern at it, so encoding the two sides apart gives the ids of the whole.
    None when the buffer has no such newline beyond `start` yet (the caller reads more text).
    """
    p = buf.rfind("\n", start + 1, limit + 1)
    while p > start and buf[p - 1].isspace():
        p = buf.rfind("\n", start + 1, p)
    if p > start:
        return p
    p = buf.find("\n", limit + 1)
    while p != -1 and buf[p - 1].isspace():
        p = buf.find("\n", p + 1)
    return p if p != -1 else None


def _chunks(pieces: Iterable[str], chunk_chars: int, cut: Callable[[str, int, int], int | None]) -> Iterator[str]:
    """Cut the concatenation of `pieces` where `cut` says, holding at most about one chunk in memory."""
    parts: list[str] = []
    size = 0
    for piece in pieces:
        parts.append(piece)
        size += len(piece)
        if size <= chunk_chars:
            continue
        buf, start = "".join(parts), 0
        while len(buf) - start > chunk_chars:
            end = cut(buf, start, start + chunk_chars)
            if end is None:
                break
            yield buf[start:end]
            start = end
        rest = buf[start:]
        parts, size = ([rest] if rest else []), len(rest)
    tail = "".join(parts)
    if tail:
        yield tail


def text_chunks(text: str | Iterable[str], chunk_chars: int | None = None) -> Iterator[str]:
    """Split a long text at line ends so BPE training and encoding stream instead of one giant string.

    `text` is one string or a stream of pieces that concatenate to it: the chunks are the same
    either way (each at most `chunk_chars` long, ending after the window's last newline when it has
    one), so a corpus read from disk a piece at a time tokenizes exactly as the whole string would.
    `chunk_chars` defaults to `CHUNK_CHARS` (read at call time).
    """
    return _chunks([text] if isinstance(text, str) else text, chunk_chars or CHUNK_CHARS, _after_last_newline)


def document_chunks(pieces: Iterable[str], chunk_chars: int | None = None) -> Iterator[str]:
    """One document (a stream of pieces) in chunks that byte-level BPE encodes exactly as the whole.

    Cuts only before a newline that follows a non-space character (see `_before_safe_newline`);
    a window without one grows until the next. For `bpe` the ids equal those of the whole document;
    a pretrained tokenizer that adds a prefix space to every text may differ at the cuts.
    """
    return _chunks(pieces, chunk_chars or CHUNK_CHARS, _before_safe_newline)


def _training_pieces(text: str | Iterable[str], piece_chars: int = 1 << 16) -> Iterator[str]:
    """`text_chunks` cut again into small pieces at `document_chunks`' cuts: the BPE trainer counts the
    same pre-tokenized words (so learns the same merges) while its read-ahead of 256 texts holds a few
    megabytes instead of 256 chunks of a megabyte."""
    for chunk in text_chunks(text):
        yield from document_chunks([chunk], piece_chars)


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Train a GPT-2-style byte-level BPE (no unknown tokens, `<|endoftext|>` as EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )
    return HFTokenizer(hf, kind="bpe")


def load_pretrained(name_or_path: str) -> HFTokenizer:
    """`AutoTokenizer.from_pretrained` for a local folder or a hub id."""
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(name_or_path), kind="pretrained")


def build_tokenizer(cfg: Any, train_text: str | Iterable[str], out_dir: Path | None = None) -> TextTokenizer:
    """Build the tokenizer a spec's `tokenizer:` section asks for, and save it into `out_dir`.

    `train_text` is one string or a stream of pieces of it (read once). `char` takes its sorted
    characters; `bpe` is trained on it, in `text_chunks` (pass the train split, never the
    validation split); `pretrained` ignores the text.
    """
    kind = _opt(cfg, "type", "char")
    if kind == "char":
        tok: TextTokenizer = CharTokenizer.from_text(train_text)
    elif kind == "bpe":
        tok = train_bpe(_training_pieces(train_text), int(_opt(cfg, "vocab_size", 50257)))
    elif kind == "pretrained":
        name = _opt(cfg, "name_or_path")
        if not name:
            raise ValueError("tokenizer.type 'pretrained' needs tokenizer.name_or_path (a folder or a hub id)")
        tok = load_pretrained(str(name))
    else:
        raise ValueError(f"unknown tokenizer.type {kind!r}: expected char, bpe or pretrained")
    if out_dir is not None:
        tok.save(Path(out_dir))
    return tok


def load_tokenizer(dir: Path) -> TextTokenizer:
    """Reload what `TextTokenizer.save` wrote (a plain HF tokenizer folder also works)."""
    dir = Path(dir)
    meta_path = dir / META_FILE
    kind = json.loads(meta_path.read_text())["kind"] if meta_path.exists() else "pretrained"
    if kind == "char":
        return CharTokenizer(json.loads((dir / CHAR_VOCAB_FILE).read_text(encoding="utf-8"))["chars"])
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(str(dir)), kind=kind)
