"""Data for the `lm` trainer: text in, a cached token memmap out, nanoGPT-style random blocks.

    data = tokenize_to_memmap(data_cfg, tok_cfg, spec_dir, cache_root, run_dir / "tokenizer")
    sampler = BlockSampler(data.train, block_size=64, batch_size=12, seed=1337)
    x, y = sampler.next_batch(device)

Tokenization happens once per (data source, tokenizer config): the result lands in
`cache_root/<hash>/` (written to a temporary folder, then renamed, under a file lock),
so a sweep of 20 runs that start together tokenizes once and the others memory-map it.

The corpus streams from disk to the memmap: a text file is read a megabyte at a time (decoded
as `datasets`' own text loader reads it), rows of json/jsonl/parquet/csv files and hub datasets
are read in batches from `datasets`' memory-mapped Arrow tables, and the tokens are written as
each batch is encoded. Neither the corpus nor its joined text is ever held whole, so WikiText-103
tokenizes in well under 2 GB. The tokens are those of the joined text (`load_text`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.lm import tokenization
from trainers.lm.tokenization import TextTokenizer, build_tokenizer, document_chunks, load_tokenizer, text_chunks

CACHE_FORMAT = 1  # bump when the layout of a cache entry changes
_HASH_CONTENT_BELOW = 64 << 20  # files smaller than this are identified by content, larger by size+mtime
_TEXT_SUFFIXES = {".txt", ".text", ".md", ".raw", ".tokens"}
_LOADERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_READ_CHARS = 1 << 20  # a text file is read this many characters at a time
_ROWS_PER_READ = 1000  # rows of a `datasets` table converted to Python strings at a time
_BATCH_CHARS = 8 << 20  # text per `encode_batch` call: the encoder's thread pool gets work for every core


def _opt(cfg: Any, name: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


# --------------------------------------------------------------------------- streaming text


@dataclass
class Split:
    """One split as a stream of documents, each a stream of text pieces; `docs()` starts a new pass."""

    n_docs: int
    docs: Callable[[], Iterator[Iterable[str]]]
    chars: int | None = None  # its length in characters when known without a pass (progress bars)

    def text(self) -> Iterator[str]:
        """The split's text in pieces: its documents joined, each ending with a newline when there are
        several (rows that already end with one, as wikitext lines, are kept as they are)."""
        join = self.n_docs > 1
        for doc in self.docs():
            last = ""
            for piece in doc:
                if piece:
                    yield piece
                    last = piece
            if join and not last.endswith("\n"):
                yield "\n"


def _resolve(path: str, spec_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(spec_dir) / p).resolve()


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")


def _read_file_chars(path: Path, start: int, stop: int | None) -> Iterator[str]:
    """Characters [start, stop) of a UTF-8 text file, a piece at a time.

    Opened in text mode exactly as `datasets`' text loader opens it (universal newlines: "\r\n"
    and "\r" read as "\n"), so the text is the one `load_dataset("text", ...)` would give.
    """
    pos = 0
    with open(path, encoding="utf-8") as f:
        while stop is None or pos < stop:
            piece = f.read(_READ_CHARS)
            if not piece:
                return
            lo, hi = max(start - pos, 0), len(piece) if stop is None else min(stop - pos, len(piece))
            pos += len(piece)
            if lo < hi:
                yield piece if (lo, hi) == (0, len(piece)) else piece[lo:hi]


def _text_file_splits(path: Path, val_fraction: float) -> tuple[Split, Split]:
    """A text file is one document: the last `val_fraction` of its characters validates (nanoGPT)."""
    n = sum(len(piece) for piece in _read_file_chars(path, 0, None))  # one pass: its length in characters
    cut = int(n * (1.0 - val_fraction))
    return (Split(1, lambda: iter([_read_file_chars(path, 0, cut)]), cut),
            Split(1, lambda: iter([_read_file_chars(path, cut, None)]), n - cut))


def _text_splits(text: str, val_fraction: float) -> tuple[Split, Split]:
    cut = int(len(text) * (1.0 - val_fraction))
    train, val = text[:cut], text[cut:]
    return Split(1, lambda: iter([(train,)]), len(train)), Split(1, lambda: iter([(val,)]), len(val))


def _rows(ds: Any, text_field: str, start: int, stop: int) -> Iterator[Iterable[str]]:
    """Rows [start, stop) of a `datasets.Dataset` column, each a one-piece document (None reads as "")."""
    for lo in range(start, stop, _ROWS_PER_READ):
        batch = ds[lo : min(lo + _ROWS_PER_READ, stop)][text_field]
        for text in batch:
            yield (text or "",)


def _table_splits(ds: Any, text_field: str, val_fraction: float | None) -> tuple[Split, Split | None]:
    """A `datasets` table as splits: the last `val_fraction` of its rows validates (None: no split).

    A one-row table is one document and is split by characters, as a text file is.
    """
    if text_field not in ds.column_names:
        raise ValueError(f"data.text_field {text_field!r} is not a column; the columns are {ds.column_names}")
    ds = ds.select_columns([text_field])
    rows = len(ds)
    if rows == 0:
        raise ValueError("the data has no rows")
    if val_fraction is None:
        return Split(rows, lambda: _rows(ds, text_field, 0, rows)), None
    if rows == 1:
        return _text_splits(ds[0][text_field] or "", val_fraction)
    n = min(rows - 1, max(1, int(rows * (1.0 - val_fraction))))
    return Split(n, lambda: _rows(ds, text_field, 0, n)), Split(rows - n, lambda: _rows(ds, text_field, n, rows))


def _load_table(path: Path) -> Any:
    """A local json/jsonl/parquet/csv file as a memory-mapped `datasets` table."""
    import datasets

    suffix = path.suffix.lower()
    if suffix not in _LOADERS:
        raise ValueError(f"data.path {path}: unsupported file type {suffix!r} (use .txt, .json, .jsonl, .parquet or .csv)")
    return datasets.load_dataset(_LOADERS[suffix], data_files=str(path), split="train")


def load_splits(data_cfg: Any, spec_dir: Path) -> tuple[Split, Split]:
    """(train, validation) streams for `data.builtin`, `data.path` or `data.hub`; nothing is read yet
    but a text file's length (one pass) and a `datasets` table's preparation (Arrow on disk)."""
    text_field = _opt(data_cfg, "text_field", "text") or "text"
    val_fraction = float(_opt(data_cfg, "val_fraction", 0.1))
    _check_fraction(val_fraction)
    if _opt(data_cfg, "builtin"):
        from trainers.lm.corpora import builtin_text

        return _text_splits(builtin_text(_opt(data_cfg, "builtin")), val_fraction)
    if _opt(data_cfg, "path"):
        path = _resolve(_opt(data_cfg, "path"), spec_dir)
        if not path.exists():
            raise FileNotFoundError(f"data.path {path} does not exist")
        if path.suffix.lower() in _TEXT_SUFFIXES:
            return _text_file_splits(path, val_fraction)
        train, val = _table_splits(_load_table(path), text_field, val_fraction)
        assert val is not None
        return train, val
    if _opt(data_cfg, "hub"):
        import datasets

        name = _opt(data_cfg, "hub")
        dsd = datasets.load_dataset(name, _opt(data_cfg, "config"), revision=_opt(data_cfg, "revision"))
        if "train" not in dsd:
            raise ValueError(f"hub dataset {name!r} has no train split (splits: {list(dsd)})")
        val_name = next((s for s in ("validation", "valid", "val") if s in dsd), None)
        if val_name is None:
            train, val = _table_splits(dsd["train"], text_field, val_fraction)
        else:  # its own validation split, whole
            train, _ = _table_splits(dsd["train"], text_field, None)
            val, _ = _table_splits(dsd[val_name], text_field, None)
        assert val is not None
        return train, val
    raise ValueError("the data section needs one of: builtin, path, hub")


def load_text(data_cfg: Any, spec_dir: Path) -> tuple[str, str]:
    """(train_text, val_text) in memory, for small corpora and tests; the token cache streams `load_splits`."""
    train, val = load_splits(data_cfg, spec_dir)
    return "".join(train.text()), "".join(val.text())


# --------------------------------------------------------------------------- the token cache


@dataclass
class TokenData:
    """Tokenized splits (read-only memmaps) and the tokenizer that produced them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: TextTokenizer
    cache_dir: Path
    meta: dict[str, Any] = field(default_factory=dict)
    cache_hit: bool = False  # False only in the process that did the tokenizing


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    ident: dict[str, Any] = {"path": str(path), "size": st.st_size}
    if st.st_size < _HASH_CONTENT_BELOW:
        ident["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        ident["mtime_ns"] = st.st_mtime_ns
    return ident


def source_identity(data_cfg: Any, spec_dir: Path) -> dict[str, Any]:
    """What identifies the data without loading it: builtin name+version, file content, or hub id."""
    ident: dict[str, Any] = {
        "val_fraction": float(_opt(data_cfg, "val_fraction", 0.1)),
        "text_field": _opt(data_cfg, "text_field", "text") or "text",
    }
    if _opt(data_cfg, "builtin"):
        from trainers.lm.corpora import VERSION

        ident.update(builtin=_opt(data_cfg, "builtin"), version=VERSION)
    elif _opt(data_cfg, "path"):
        ident.update(_file_identity(_resolve(_opt(data_cfg, "path"), spec_dir)))
    elif _opt(data_cfg, "hub"):
        ident.update(hub=_opt(data_cfg, "hub"), config=_opt(data_cfg, "config"), revision=_opt(data_cfg, "revision"))
    else:
        raise ValueError("the data section needs one of: builtin, path, hub")
    return ident


def tokenizer_identity(tok_cfg: Any) -> dict[str, Any]:
    """The tokenizer settings that change the token ids (a local pretrained folder by its file stats)."""
    kind = _opt(tok_cfg, "type", "char")
    ident: dict[str, Any] = {"type": kind, "add_eos": bool(_opt(tok_cfg, "add_eos", False))}
    if kind == "bpe":
        ident["vocab_size"] = int(_opt(tok_cfg, "vocab_size", 50257))
    if kind == "pretrained":
        name = str(_opt(tok_cfg, "name_or_path"))
        ident["name_or_path"] = name
        if Path(name).is_dir():
            ident["files"] = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(name).iterdir())
    return ident


def cache_key(data_cfg: Any, tok_cfg: Any, spec_dir: Path) -> tuple[str, dict[str, Any]]:
    ident = {
        "format": CACHE_FORMAT,
        "data": source_identity(data_cfg, spec_dir),
        "tokenizer": tokenizer_identity(tok_cfg),
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:16], ident


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


def _progress(desc: str, total: int | None) -> Any:
    """A tqdm bar on stderr for a long preparation: it appears only after 5 s, so small corpora print nothing."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="char", unit_scale=True, file=sys.stderr, delay=5.0,
                mininterval=1.0 if tty else 30.0, dynamic_ncols=tty)


def _counted(pieces: Iterable[str], bar: Any) -> Iterator[str]:
    for piece in pieces:
        bar.update(len(piece))
        yield piece


def _encode_units(split: Split, per_document: bool) -> Iterator[tuple[str, bool]]:
    """(text, ends a document) in encoding order: chunks of the joined text, or each document whole
    (a long one in `document_chunks`, which encode to the same ids) when documents get an EOS."""
    if not per_document:
        for chunk in text_chunks(split.text()):
            yield chunk, False
        return
    for doc in split.docs():
        if isinstance(doc, tuple) and len(doc) == 1 and len(doc[0]) <= tokenization.CHUNK_CHARS:
            yield doc[0], True
            continue
        prev = None
        for chunk in document_chunks(doc):
            if prev is not None:
                yield prev, False
            prev = chunk
        yield prev or "", True


def _batches(units: Iterator[tuple[str, bool]], batch_chars: int) -> Iterator[list[tuple[str, bool]]]:
    batch: list[tuple[str, bool]] = []
    size = 0
    for unit in units:
        batch.append(unit)
        size += len(unit[0])
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_split(path: Path, split: Split, tok: TextTokenizer, eos_id: int | None, dtype: np.dtype,
                 desc: str) -> tuple[int, int]:
    """Encode `split` batch by batch straight into `path`; (tokens written, characters encoded).

    The tokens are those of `tok.encode_batch(list(text_chunks(joined text)))`, concatenated; with
    `eos_id`, those of each document followed by `eos_id`.
    """
    n_tokens = n_chars = 0
    eos = np.array([eos_id if eos_id is not None else 0], dtype=dtype)
    with open(path, "wb") as f, _progress(desc, split.chars) as bar:
        for batch in _batches(_encode_units(split, eos_id is not None), _BATCH_CHARS):
            parts = []
            for (text, ends_doc), ids in zip(batch, tok.encode_arrays([t for t, _ in batch])):
                parts.append(ids.astype(dtype, copy=False))
                if ends_doc:
                    parts.append(eos)
                n_chars += len(text)
            out = np.concatenate(parts) if parts else np.zeros(0, dtype)
            out.tofile(f)
            n_tokens += len(out)
            bar.update(sum(len(t) for t, _ in batch))
    return n_tokens, n_chars


def _build_entry(tmp: Path, data_cfg: Any, tok_cfg: Any, spec_dir: Path, ident: dict[str, Any]) -> dict[str, Any]:
    """Build the tokenizer (on the train split), then stream both splits through it into `tmp`."""
    t0 = time.time()
    train, val = load_splits(data_cfg, spec_dir)
    kind = _opt(tok_cfg, "type", "char")
    # A char vocabulary is the set of characters of the whole corpus, as nanoGPT's shakespeare_char
    # does: otherwise a character seen only in validation could not be encoded. BPE learns on train only.
    vocab_text = (piece for split in (train, val) for piece in split.text()) if kind == "char" else train.text()
    total = (train.chars or 0) + (val.chars or 0) if kind == "char" else train.chars
    with _progress("tokenizer: reading the corpus" if kind != "bpe" else "tokenizer: learning BPE", total) as bar:
        tok = build_tokenizer(tok_cfg, _counted(vocab_text, bar), tmp / "tokenizer")
    t1 = time.time()
    dtype = _token_dtype(tok.vocab_size)
    eos_id = tok.eos_id if bool(_opt(tok_cfg, "add_eos", False)) else None
    n_train, train_chars = _write_split(tmp / "train.bin", train, tok, eos_id, dtype, "tokenizing train")
    n_val, val_chars = _write_split(tmp / "val.bin", val, tok, eos_id, dtype, "tokenizing val")
    meta = {
        "identity": ident,
        "tokenizer_kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "dtype": dtype.name,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "train_chars": train_chars,
        "val_chars": val_chars,
        "seconds": round(time.time() - t0, 3),
        "tokenizer_seconds": round(t1 - t0, 3),
        "encode_seconds": round(time.time() - t1, 3),
        "created_by_pid": os.getpid(),
        "created_at": time.time(),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return meta


def _open_entry(entry: Path, cache_hit: bool, tokenizer_out: Path | None) -> TokenData:
    meta = json.loads((entry / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    tok = load_tokenizer(entry / "tokenizer")
    if tokenizer_out is not None:
        tok.save(Path(tokenizer_out))
    return TokenData(
        train=np.memmap(entry / "train.bin", dtype=dtype, mode="r"),
        val=np.memmap(entry / "val.bin", dtype=dtype, mode="r"),
        tokenizer=tok,
        cache_dir=entry,
        meta=meta,
        cache_hit=cache_hit,
    )


def tokenize_to_memmap(
    data_cfg: Any,
    tok_cfg: Any,
    spec_dir: Path,
    cache_root: Path,
    tokenizer_out: Path | None = None,
) -> TokenData:
    """Tokenize once into `cache_root/<hash>/{train.bin,val.bin,meta.json,tokenizer/}` and memory-map it.

    The hash covers the data's identity and the tokenizer config. Concurrent callers serialize on a
    file lock; the first one builds the entry in a temporary folder and renames it into place, so an
    interrupted build never leaves an entry that looks complete. The tokenizer is also saved into
    `tokenizer_out` (the run's `tokenizer/` folder) when given.
    """
    from filelock import FileLock

    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    key, ident = cache_key(data_cfg, tok_cfg, Path(spec_dir))
    entry = cache_root / key
    hit = _try_open(entry, tokenizer_out)
    if hit is not None:
        return hit
    with FileLock(str(cache_root / f".{key}.lock")):
        hit = _try_open(entry, tokenizer_out)  # another process may have built it while we waited
        if hit is not None:
            return hit
        tmp = cache_root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _build_entry(tmp, data_cfg, tok_cfg, Path(spec_dir), ident)
            if entry.exists():  # damaged (unreadable) entry: replace it
                shutil.rmtree(entry)
            os.rename(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _open_entry(entry, False, tokenizer_out)


def prepare(spec: Any, results_root: Path) -> str:
    """`orch prefetch`: tokenize the spec's corpus into the token cache its runs will read (the
    `TrainerInfo.prepare` hook), so a sweep's jobs do not each load and tokenize on compute nodes."""
    from trainers.framework.base import token_cache_root

    data = tokenize_to_memmap(spec.data, spec.tokenizer, Path.cwd(), token_cache_root(results_root))
    what = "already tokenized" if data.cache_hit else "tokenized"
    return f"{what}: {len(data.train):,} train / {len(data.val):,} val tokens in {data.cache_dir}"


def _try_open(entry: Path, tokenizer_out: Path | None) -> TokenData | None:
    """The cached entry, or None when it is missing or unreadable (then it gets rebuilt)."""
    if not (entry / "meta.json").exists():
        return None
    try:
        return _open_entry(entry, True, tokenizer_out)
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------- batches


def _gather_blocks(tokens: np.ndarray, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x = tokens[i : i+block], y = tokens[i+1 : i+1+block] for each start i, as int64 tensors."""
    rows = np.stack([np.asarray(tokens[i : i + block_size + 1]) for i in starts.tolist()])
    xy = torch.from_numpy(rows.astype(np.int64))
    return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    device = torch.device(device)
    if device.type == "cuda":  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def _check_length(tokens: np.ndarray, block_size: int, what: str) -> None:
    if len(tokens) < block_size + 1:
        raise ValueError(f"{what} has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}")


class BlockSampler:
    """Random contiguous blocks of the training tokens (nanoGPT's get_batch), resumable exactly.

    Batch k's start positions depend only on (seed, k): the global batch of
    `batch_size * world_size` starts is drawn from a generator seeded with (seed, k) and each rank
    takes its own slice. So a 2-process run sees exactly the blocks of a 1-process run with the same
    global batch, and the state to checkpoint is just k.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        _check_length(tokens, block_size, "the training split")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batches_drawn = 0
        self._gen = torch.Generator()

    @property
    def tokens_per_batch(self) -> int:
        """Tokens this rank consumes per batch."""
        return self.batch_size * self.block_size

    @property
    def epoch_tokens(self) -> int:
        """Tokens in one pass over the training split (the unit of `train.epochs`)."""
        return len(self.tokens)

    def epochs_seen(self, tokens_seen: int) -> float:
        """How many passes over the training split `tokens_seen` (global, all ranks) amounts to."""
        return tokens_seen / self.epoch_tokens

    def _global_starts(self, k: int) -> torch.Tensor:
        self._gen.manual_seed(self.seed * 1_000_003 + k)
        high = len(self.tokens) - self.block_size
        return torch.randint(high, (self.batch_size * self.world_size,), generator=self._gen)

    def next_batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 [batch_size, block_size], y is x shifted by one token."""
        starts = self._global_starts(self.batches_drawn)
        self.batches_drawn += 1
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return _to_device(*_gather_blocks(self.tokens, mine, self.block_size), device)

    def state_dict(self) -> dict[str, int]:
        return {
            "batches_drawn": self.batches_drawn,
            "seed": self.seed,
            "block_size": self.block_size,
            "global_batch_size": self.batch_size * self.world_size,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue where `state` left off; refuses a state drawn with a different seed or block size.

        A different global micro-batch (after `orch monitor` halved the batch and doubled
        grad_accum on an out-of-memory retry) continues at the same token position: batch k of the
        new shape is drawn from a seed no earlier batch used, so no block is replayed by design.
        """
        for key in ("seed", "block_size"):
            mine = self.state_dict()[key]
            if key in state and int(state[key]) != mine:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {mine}")
        drawn = int(state["batches_drawn"])
        old_global = int(state.get("global_batch_size", self.batch_size * self.world_size))
        new_global = self.batch_size * self.world_size
        if old_global != new_global:
            consumed = drawn * old_global  # sequences drawn so far, all ranks
            drawn = -(-consumed // new_global)  # ceil: never step back onto drawn seeds
        self.batches_drawn = drawn


def epochs_to_steps(epochs: float, n_train_tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps for a `train.epochs` budget, with `tokens_per_step` the global tokens per step."""
    return max(1, math.ceil(epochs * n_train_tokens / tokens_per_step))


def iter_eval_batches(
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    n_batches: int,
    seed: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same `n_batches` validation blocks every time (fixed seed), so val losses compare across evals.

    With world_size > 1, batch i goes to rank i % world_size (reduce the per-rank sums afterwards).
    """
    _check_length(tokens, block_size, "the validation split")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(tokens) - block_size, (n_batches, batch_size), generator=gen)
    for i in range(rank, n_batches, world_size):
        yield _to_device(*_gather_blocks(tokens, starts[i], block_size), device)
