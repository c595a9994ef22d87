"""Data pipeline of the `lm` trainer: loading, the token cache, random blocks and exact resume."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from trainers.lm.config import DataSpec, TokenizerSpec
from trainers.lm.corpora import BUILTIN_CORPORA, builtin_text
from trainers.lm.data import (
    BlockSampler,
    _token_dtype,
    epochs_to_steps,
    iter_eval_batches,
    load_text,
    tokenize_to_memmap,
)

ROOT = Path(__file__).resolve().parents[2]  # the project root; the shared data sits beside it
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CHAR = TokenizerSpec(type="char")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- loading


def test_text_file_splits_90_10_by_characters_like_nanogpt():
    if not SHAKESPEARE.exists():
        pytest.skip(f"Tiny Shakespeare is not at {SHAKESPEARE} (the shared data folder is absent)")
    raw = SHAKESPEARE.read_text(encoding="utf-8")
    # A relative path is relative to the spec's folder.
    train, val = load_text(DataSpec(path="../shared/data/tinyshakespeare/input.txt"), ROOT)
    n = len(raw)
    assert train == raw[: int(n * 0.9)] and val == raw[int(n * 0.9) :]


def test_jsonl_json_and_parquet_read_the_text_field(tmp_path: Path):
    rows = [{"body": f"document number {i}.", "id": i} for i in range(20)]
    _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    _write(tmp_path / "d.json", json.dumps(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "d.parquet"):
        train, val = load_text(DataSpec(path=name, text_field="body", val_fraction=0.25), tmp_path)
        # Many documents: the last quarter of the documents is held out, one per line.
        assert train.splitlines() == [f"document number {i}." for i in range(15)], name
        assert val.splitlines() == [f"document number {i}." for i in range(15, 20)], name


def test_missing_text_field_is_a_clear_error(tmp_path: Path):
    _write(tmp_path / "d.jsonl", json.dumps({"body": "x"}) + "\n" + json.dumps({"body": "y"}))
    with pytest.raises(ValueError, match="text_field 'text' is not a column"):
        load_text(DataSpec(path="d.jsonl"), tmp_path)


def test_builtin_corpora_are_deterministic_and_small():
    for name in BUILTIN_CORPORA:
        text = builtin_text(name)
        assert text == builtin_text(name)
        assert 100_000 < len(text) < 1_000_000
    train, val = load_text(DataSpec(builtin="arith"), Path("."))
    assert val and len(train) == pytest.approx(9 * len(val), rel=0.01)
    with pytest.raises(ValueError, match="unknown builtin corpus"):
        builtin_text("nope")


@pytest.mark.parametrize(("corpus", "drop"), [("grammar", 1.0), ("arith", 0.5)])
def test_builtin_corpus_is_learned_within_60_cpu_steps(
    corpus: str, drop: float, tmp_path: Path, request: pytest.FixtureRequest
):
    """The quickstart's promise: validation loss visibly falls within ~60 steps of a tiny model on CPU.

    Measured: grammar 3.27 -> 1.88, arith 2.66 -> 2.03.
    """
    from trainers.lm.diagnostics import estimate_loss
    from trainers.lm.models import build_model

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and robust on a busy 2-core machine
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    data = tokenize_to_memmap(DataSpec(builtin=corpus), CHAR, tmp_path, tmp_path / "cache")
    spec = {"arch": "gpt2", "n_layer": 1, "n_head": 2, "d_model": 32, "max_seq_len": 32}
    model = build_model(spec, data.tokenizer.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sampler = BlockSampler(data.train, block_size=32, batch_size=8, seed=0)
    val = list(iter_eval_batches(data.val, 32, 16, 4, seed=1))
    before = estimate_loss(model, val)
    for _ in range(60):
        x, y = sampler.next_batch("cpu")
        loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = estimate_loss(model, val)
    assert after < before - drop, (before, after)


def test_a_damaged_cache_entry_is_rebuilt(tmp_path: Path):
    _write(tmp_path / "c.txt", "abc def\n" * 100)
    first = tokenize_to_memmap(DataSpec(path="c.txt"), CHAR, tmp_path, tmp_path / "cache", None)
    for f in (first.cache_dir / "tokenizer").iterdir():
        f.unlink()  # e.g. someone cleaned files by hand
    again = tokenize_to_memmap(DataSpec(path="c.txt"), CHAR, tmp_path, tmp_path / "cache", None)
    assert not again.cache_hit and again.cache_dir == first.cache_dir
    assert again.tokenizer.decode(again.train) == load_text(DataSpec(path="c.txt"), tmp_path)[0]


# --------------------------------------------------------------------------- the token cache


def test_tokenize_once_then_cache_hit(tmp_path: Path):
    corpus = _write(tmp_path / "corpus.txt", "to be or not to be, that is the question.\n" * 200)
    data_cfg = DataSpec(path="corpus.txt")
    first = tokenize_to_memmap(data_cfg, CHAR, tmp_path, tmp_path / "cache", tmp_path / "run1" / "tokenizer")
    assert not first.cache_hit
    assert isinstance(first.train, np.memmap) and first.train.dtype == np.uint16
    train_text, val_text = load_text(data_cfg, tmp_path)
    assert first.tokenizer.decode(first.train) == train_text and first.tokenizer.decode(first.val) == val_text
    assert (tmp_path / "run1" / "tokenizer").is_dir()
    bin_mtime = (first.cache_dir / "train.bin").stat().st_mtime_ns

    second = tokenize_to_memmap(data_cfg, CHAR, tmp_path, tmp_path / "cache", tmp_path / "run2" / "tokenizer")
    assert second.cache_hit and second.cache_dir == first.cache_dir
    assert (second.cache_dir / "train.bin").stat().st_mtime_ns == bin_mtime  # not rewritten
    assert np.array_equal(second.train, first.train)
    assert (tmp_path / "run2" / "tokenizer").is_dir()
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == [first.cache_dir.name]

    # A different tokenizer or changed content is a different entry.
    other = tokenize_to_memmap(data_cfg, TokenizerSpec(type="bpe", vocab_size=300), tmp_path, tmp_path / "cache", None)
    assert other.cache_dir != first.cache_dir and not other.cache_hit
    corpus.write_text(corpus.read_text() + "more.\n")
    changed = tokenize_to_memmap(data_cfg, CHAR, tmp_path, tmp_path / "cache", None)
    assert changed.cache_dir != first.cache_dir and not changed.cache_hit


def test_bpe_is_trained_on_the_train_split_only(tmp_path: Path):
    train_part = "the cat sat on the mat. " * 400
    val_part = "zqxjvk wobbulator zqxjvk wobbulator " * 200  # only in the last 10 %
    _write(tmp_path / "c.txt", train_part + val_part[: len(train_part) // 9])
    data = tokenize_to_memmap(DataSpec(path="c.txt"), TokenizerSpec(type="bpe", vocab_size=400), tmp_path, tmp_path / "cache", None)
    tok = data.tokenizer
    assert len(tok.encode(" cat")) == 1
    assert len(tok.encode(" wobbulator")) > 3  # never merged: BPE never saw the validation text
    assert tok.decode(data.val).startswith(" zqxjvk") or "zqxjvk" in tok.decode(data.val)


def _tokenize_in_child(args: tuple[str, str, mp.synchronize.Barrier]) -> tuple[bool, str]:
    spec_dir, cache_root, barrier = args
    barrier.wait()
    data = tokenize_to_memmap(DataSpec(path="corpus.txt"), TokenizerSpec(type="bpe", vocab_size=400), Path(spec_dir), Path(cache_root), None)
    return data.cache_hit, str(data.cache_dir)


def test_two_processes_tokenizing_at_once_make_one_cache_entry(tmp_path: Path):
    _write(tmp_path / "corpus.txt", "all the world's a stage, and all the men and women merely players.\n" * 3000)
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(2)
    with ctx.Pool(2) as pool:
        results = pool.map(_tokenize_in_child, [(str(tmp_path), str(tmp_path / "cache"), barrier)] * 2)
    hits = sorted(hit for hit, _ in results)
    assert hits == [False, True]  # exactly one process tokenized, the other waited and reused it
    assert len({d for _, d in results}) == 1
    entries = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp-")]


def test_token_dtype_widens_for_large_vocabularies():
    assert _token_dtype(65) == np.uint16 and _token_dtype(65535) == np.uint16
    assert _token_dtype(65536) == np.uint32 and _token_dtype(128256) == np.uint32


# --------------------------------------------------------------------------- batches


TOKENS = np.arange(10_000, dtype=np.uint16)  # token i at position i: a block's start is its first value


def test_blocks_are_contiguous_and_targets_shifted_by_one():
    x, y = BlockSampler(TOKENS, block_size=8, batch_size=4, seed=0).next_batch("cpu")
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.equal(x, x[:, :1] + torch.arange(8))


def test_sampler_resume_reproduces_the_same_batches():
    straight = BlockSampler(TOKENS, 16, 4, seed=7)
    batches = [straight.next_batch("cpu")[0] for _ in range(10)]

    first = BlockSampler(TOKENS, 16, 4, seed=7)
    for _ in range(5):
        first.next_batch("cpu")
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint round trip
    resumed = BlockSampler(TOKENS, 16, 4, seed=7)
    resumed.load_state_dict(state)
    for expected in batches[5:]:
        assert torch.equal(resumed.next_batch("cpu")[0], expected)

    with pytest.raises(ValueError, match="seed"):
        BlockSampler(TOKENS, 16, 4, seed=8).load_state_dict(state)


def test_two_ranks_together_draw_the_one_process_global_batch():
    single = BlockSampler(TOKENS, 16, batch_size=6, seed=3)
    ranks = [BlockSampler(TOKENS, 16, batch_size=3, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        expected = single.next_batch("cpu")[0]
        got = torch.cat([s.next_batch("cpu")[0] for s in ranks])
        assert torch.equal(got, expected)
    assert not torch.equal(ranks[0].next_batch("cpu")[0], ranks[1].next_batch("cpu")[0])


def test_different_seeds_draw_different_blocks():
    a = BlockSampler(TOKENS, 16, 4, seed=1).next_batch("cpu")[0]
    b = BlockSampler(TOKENS, 16, 4, seed=2).next_batch("cpu")[0]
    assert not torch.equal(a, b)


def test_eval_batches_are_the_same_at_every_evaluation_and_split_across_ranks():
    first = list(iter_eval_batches(TOKENS, 32, 4, 6, seed=0))
    again = list(iter_eval_batches(TOKENS, 32, 4, 6, seed=0))
    assert len(first) == 6 and all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    by_rank = [list(iter_eval_batches(TOKENS, 32, 4, 6, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(by_rank[0]) == len(by_rank[1]) == 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(by_rank[0], first[0::2]))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(by_rank[1], first[1::2]))


def test_too_short_split_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than block_size"):
        BlockSampler(np.arange(10, dtype=np.uint16), block_size=16, batch_size=2, seed=0)


def test_epoch_accounting():
    sampler = BlockSampler(TOKENS, 16, 4, seed=0, world_size=2)
    assert sampler.epoch_tokens == 10_000 and sampler.tokens_per_batch == 64
    assert sampler.epochs_seen(25_000) == 2.5
    assert epochs_to_steps(2.0, 10_000, 128) == 157  # ceil(20000 / 128)


def test_sampler_resumes_after_batch_halving_at_the_same_token_position() -> None:
    """An OOM retry halves batch_size and doubles grad_accum: resume continues, it does not fail."""
    import numpy as np

    from trainers.lm.data import BlockSampler

    tokens = np.arange(10_000, dtype=np.uint16)
    big = BlockSampler(tokens, block_size=16, batch_size=8, seed=3)
    seen = {tuple(big.next_batch()[0][i].tolist()) for _ in range(5) for i in range(8)}
    small = BlockSampler(tokens, block_size=16, batch_size=4, seed=3)
    small.load_state_dict(big.state_dict())
    assert small.batches_drawn * 4 == big.batches_drawn * 8  # same number of sequences consumed
    x, _ = small.next_batch()
    assert x.shape == (4, 16)
    assert all(tuple(row.tolist()) not in seen for row in x)
    other = BlockSampler(tokens, block_size=32, batch_size=4, seed=3)
    with pytest.raises(ValueError, match="block_size"):
        other.load_state_dict(big.state_dict())


# --------------------------------------------------------------------------- streaming = the joined text


_REFERENCE_BPE: dict = {}


def _reference_tokens(train_docs: list[str], val_docs: list[str], tok_cfg: TokenizerSpec, chunk: int):
    """The pre-streaming path, kept here as the reference: join each split into one string, build
    the tokenizer on it, encode the joined text in line-end chunks (or each document + EOS)."""
    from trainers.lm.tokenization import CharTokenizer, train_bpe

    def join(docs: list[str]) -> str:
        return docs[0] if len(docs) == 1 else "".join(d if d.endswith("\n") else d + "\n" for d in docs)

    def chunks(text: str):
        start = 0
        while start < len(text):
            end = min(start + chunk, len(text))
            if end < len(text):
                newline = text.rfind("\n", start, end)
                end = newline + 1 if newline > start else end
            yield text[start:end]
            start = end

    train, val = join(train_docs), join(val_docs)
    if tok_cfg.type == "char":
        tok = CharTokenizer(sorted(set(train + val)))
    else:  # the same for the bpe and bpe-eos cases: learned once
        key = (hash(train), tok_cfg.vocab_size, chunk)
        if key not in _REFERENCE_BPE:
            _REFERENCE_BPE[key] = train_bpe(chunks(train), tok_cfg.vocab_size)
        tok = _REFERENCE_BPE[key]

    def encode(docs: list[str], text: str) -> list[int]:
        if tok_cfg.add_eos and tok.eos_id is not None:
            return [i for ids in tok.encode_batch(docs) for i in ids + [tok.eos_id]]
        return [i for ids in tok.encode_batch(list(chunks(text))) for i in ids]

    return tok, encode(train_docs, train), encode(val_docs, val)


STREAM_TOKENIZERS = [TokenizerSpec(type="char"), TokenizerSpec(type="bpe", vocab_size=300),
                     TokenizerSpec(type="bpe", vocab_size=300, add_eos=True)]


@pytest.mark.parametrize("tok_cfg", STREAM_TOKENIZERS, ids=["char", "bpe", "bpe-eos"])
@pytest.mark.parametrize("source", ["shakespeare", "jsonl"])
def test_streamed_tokens_equal_those_of_the_joined_text(tmp_path: Path, monkeypatch, source: str, tok_cfg):
    """Streaming (text read in pieces, rows in batches, tokens written per batch) changes no token.

    Small chunk/read/batch sizes put hundreds of boundaries into the corpus: chunks cut across read
    pieces and documents, long documents with EOS are cut in `document_chunks`.
    """
    from trainers.lm import data as data_mod, tokenization

    monkeypatch.setattr(tokenization, "CHUNK_CHARS", 20_000)
    monkeypatch.setattr(data_mod, "_READ_CHARS", 7_777)
    monkeypatch.setattr(data_mod, "_ROWS_PER_READ", 37)
    monkeypatch.setattr(data_mod, "_BATCH_CHARS", 50_000)
    if source == "shakespeare":
        if not SHAKESPEARE.exists():
            pytest.skip(f"Tiny Shakespeare is not at {SHAKESPEARE} (the shared data folder is absent)")
        text = SHAKESPEARE.read_text(encoding="utf-8")
        cut = int(len(text) * 0.9)
        train_docs, val_docs = [text[:cut]], [text[cut:]]
        data_cfg = DataSpec(path=str(SHAKESPEARE))
    else:  # rows with and without a final newline, empty ones, and one longer than a chunk
        words = ["alpha", "beta  gamma", "delta\n", "", "epsilon.\n\n", "  zeta\neta"]
        docs = [" ".join(words[(i * 7 + j) % 6] for j in range(i % 23)) for i in range(4000)]
        docs[1234] = "a long row, line after line.\n" * 2000
        (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
        n = int(len(docs) * 0.9)
        train_docs, val_docs = docs[:n], docs[n:]
        data_cfg = DataSpec(path="d.jsonl")
    ref_tok, ref_train, ref_val = _reference_tokens(train_docs, val_docs, tok_cfg, 20_000)
    data = tokenize_to_memmap(data_cfg, tok_cfg, tmp_path, tmp_path / "cache", None)
    assert data.tokenizer.vocab_size == ref_tok.vocab_size
    if tok_cfg.type == "char":
        assert data.tokenizer.chars == ref_tok.chars
    else:
        assert data.tokenizer.hf.backend_tokenizer.to_str() == ref_tok.hf.backend_tokenizer.to_str()
    assert np.array_equal(data.train, np.array(ref_train)) and np.array_equal(data.val, np.array(ref_val))
    joins = 0 if len(train_docs) == 1 or tok_cfg.add_eos else sum(not d.endswith("\n") for d in train_docs)
    assert data.meta["train_chars"] == sum(len(t) for t in train_docs) + joins  # the characters encoded


def test_streaming_reads_the_file_as_the_datasets_text_loader_does(tmp_path: Path):
    """Windows and old-Mac line ends read as "\n" (universal newlines), as `load_dataset("text")` reads them."""
    import datasets

    (tmp_path / "c.txt").write_bytes(("line one\r\nline two\rline three\n" * 50).encode() + "é✓".encode())
    train, val = load_text(DataSpec(path="c.txt"), tmp_path)
    whole = datasets.load_dataset("text", data_files=str(tmp_path / "c.txt"), sample_by="document", split="train")[0]["text"]
    assert train + val == whole and "\r" not in whole and len(train) == int(len(whole) * 0.9)
