"""Peak memory and speed of the `lm` trainer's tokenization on big corpora (issue 17).

    python bench/tokenize_scale.py [--sizes-mb 100 500] [--vocab 8192] [--keep DIR]

For each size a text corpus of that many megabytes is written into a temporary folder (the lines of
Tiny Shakespeare, shuffled, again and again; a synthetic word salad when the shared data is absent).
Then, one after the other (A B A B over the sizes, so the load of a shared machine falls on both):

  A  the trainer's data path, `tokenize_to_memmap` with `tokenizer: {type: bpe}` (it learns the
     byte-level BPE on the train split, then streams both splits to the token memmap), in a child
     process: its peak RSS (`getrusage(RUSAGE_CHILDREN).ru_maxrss` of that child) and the encoding
     throughput (the cache entry's `encode_seconds`: reading, chunking, encoding, writing);
  B  the `tokenizers` library's own `Tokenizer.encode_batch` with the same tokenizer.json over the
     same text (read whole, cut at line ends into 1 MB chunks, encoded 16 chunks per call), in a
     child process, timing the encoding only.

Targets: A's peak RSS under 2 GB and flat from the small corpus to the big one; A's throughput at
least 0.8x B's. Temporary files are removed at the end (unless --keep). A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def write_corpus(path: Path, size_mb: float, source: Path, seed: int = 0) -> int:
    """A corpus of about `size_mb` MB of shuffled lines, written a block at a time; its size in bytes."""
    rng = random.Random(seed)
    if source.exists():
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    else:
        words = [f"w{i}" for i in range(20000)]
        lines = [" ".join(rng.choices(words, k=rng.randint(3, 15))) + "\n" for _ in range(40000)]
    target, written = int(size_mb * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(lines)
            block = "".join(lines)
            f.write(block)
            written += len(block.encode("utf-8"))
    return path.stat().st_size


# ------------------------------------------------------------------ children (run as separate processes)
def child_trainer_path(corpus: str, cache: str, vocab: int) -> dict:
    sys.path.insert(0, str(REPO))
    from trainers.lm.config import DataSpec, TokenizerSpec
    from trainers.lm.data import tokenize_to_memmap

    t0 = time.perf_counter()
    data = tokenize_to_memmap(DataSpec(path=corpus), TokenizerSpec(type="bpe", vocab_size=vocab), Path("."),
                              Path(cache), None)
    m = data.meta
    return {"seconds": time.perf_counter() - t0, "tokenizer_seconds": m["tokenizer_seconds"],
            "encode_seconds": m["encode_seconds"], "chars": m["train_chars"] + m["val_chars"],
            "tokens": m["train_tokens"] + m["val_tokens"], "tokenizer_json": str(data.cache_dir / "tokenizer" / "tokenizer.json")}


def child_library(corpus: str, tokenizer_json: str) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    text = Path(corpus).read_text(encoding="utf-8")
    chunks, start, size = [], 0, 1 << 20
    while start < len(text):  # line-end chunks of 1 MB, as a user of the library would cut a long text
        end = min(start + size, len(text))
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        chunks.append(text[start:end])
        start = end
    del text
    t0 = time.perf_counter()
    tokens = 0
    for i in range(0, len(chunks), 16):
        for enc in tok.encode_batch(chunks[i : i + 16], add_special_tokens=False):
            tokens += len(enc.ids)
    return {"encode_seconds": time.perf_counter() - t0, "chars": sum(map(len, chunks)), "tokens": tokens}


def measured(args: list[str]) -> tuple[dict, float]:
    """Run this script's child `args` through a fresh wrapper process: (its JSON result, its peak RSS in MB)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(r.stderr); print(r.stdout.strip().splitlines()[-1] if r.returncode == 0 else 'FAILED'); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, __file__, *args],
                         capture_output=True, text=True, check=True)
    result, rss_kb = out.stdout.strip().splitlines()[-2:]
    if result == "FAILED":
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(result), int(rss_kb) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[100, 500])
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--lines-from", type=Path, default=SHAKESPEARE, help="text whose lines make the corpus")
    ap.add_argument("--keep", help="write the corpora and caches here and keep them")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        result = child_trainer_path(rest[0], rest[1], int(rest[2])) if kind == "trainer" else child_library(*rest)
        print(json.dumps(result))
        return

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="orch-tokscale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("RAYON_NUM_THREADS", "all")
    print(f"# corpus: {f'lines of {args.lines_from}, shuffled' if args.lines_from.exists() else 'synthetic words'}; "
          f"byte-level BPE, vocab {args.vocab}; {os.cpu_count()} CPUs, encoder threads: {threads}")
    print(f"{'corpus':>8} | {'A peak RSS':>10} | {'A learn BPE':>11} | {'A encode':>12} | {'B encode_batch':>14} "
          f"| {'A/B':>5}")
    rows = []
    try:
        for size in args.sizes_mb:
            corpus = tmp / f"corpus-{size:g}mb.txt"
            nbytes = write_corpus(corpus, size, args.lines_from)
            a, rss = measured(["--child", "trainer", str(corpus), str(tmp / f"cache-{size:g}"), str(args.vocab)])
            b, _ = measured(["--child", "library", str(corpus), a["tokenizer_json"]])
            a_rate, b_rate = a["chars"] / a["encode_seconds"] / 1e6, b["chars"] / b["encode_seconds"] / 1e6
            rows.append((size, rss))
            print(f"{nbytes / 1e6:>6.0f}MB | {rss:>7.0f} MB | {a['tokenizer_seconds']:>9.1f} s | "
                  f"{a_rate:>6.2f} Mchar/s | {b_rate:>8.2f} Mchar/s | {a_rate / b_rate:>5.2f}", flush=True)
            if not args.keep:
                shutil.rmtree(tmp / f"cache-{size:g}", ignore_errors=True)
                corpus.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(rows) > 1:
        (s0, r0), (s1, r1) = rows[0], rows[-1]
        print(f"peak RSS {r0:.0f} MB at {s0:g} MB -> {r1:.0f} MB at {s1:g} MB ({r1 / r0:.2f}x for {s1 / s0:g}x the text)")


if __name__ == "__main__":
    main()
