"""Tokenizers for the `lm` trainer: character-level, byte-level BPE, or any pretrained one.

All three sit behind one small interface (`TextTokenizer`) so the data pipeline,
the trainer and generation never care which kind a run uses. `bpe` and
`pretrained` are Hugging Face fast tokenizers and are saved in Hugging Face format,
so a run's `tokenizer/` folder loads with `AutoTokenizer.from_pretrained` too.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

META_FILE = "orch_tokenizer.json"  # written next to the tokenizer files; says which kind to reload
CHAR_VOCAB_FILE = "char_vocab.json"  # not vocab.json: that name means a GPT-2 vocabulary to AutoTokenizer
EOS_TOKEN = "<|endoftext|>"  # GPT-2's end-of-text token, used by the byte-level BPE we train


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

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

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

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, dir: Path) -> None:
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(dir))
        _write_meta(dir, self.kind)


def _write_meta(dir: Path, kind: str) -> None:
    (dir / META_FILE).write_text(json.dumps({"kind": kind}) + "\n")


def _text_chunks(text: str, chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Split a long text at line ends so BPE training and encoding stream instead of one giant string."""
    start = 0
    while start < len(text):
        end = min(start + chunk_chars, len(text))
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline > start else end
        yield text[start:end]
        start = end


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


def build_tokenizer(cfg: Any, train_text: str, out_dir: Path | None = None) -> TextTokenizer:
    """Build the tokenizer a spec's `tokenizer:` section asks for, and save it into `out_dir`.

    `char` takes the sorted characters of `train_text`; `bpe` is trained on `train_text` only
    (pass the train split, never the validation split); `pretrained` ignores the text.
    """
    kind = _opt(cfg, "type", "char")
    if kind == "char":
        tok: TextTokenizer = CharTokenizer.from_text(train_text)
    elif kind == "bpe":
        tok = train_bpe(_text_chunks(train_text), int(_opt(cfg, "vocab_size", 50257)))
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
