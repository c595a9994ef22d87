#!/usr/bin/env python3
"""Time `orch preserve` against `cp -r` + `sha256sum` of the copy, on the same run folder.

Why: the issue's target is that a verified preserve (a BagIt bag: payload hashed while copied,
manifests, RO-Crate metadata, fsyncs) costs at most 1.1x an unverified copy plus a separate
checksum pass. The run folder holds one big random checkpoint (default 2 GB) plus the usual small
files. orch reads each source file once and hashes with Python's hashlib (OpenSSL, which uses the
CPU's SHA extensions where there are some); `sha256sum` reads the copy again and, in coreutils
builds without OpenSSL, hashes in plain C, so the ratio can be far below 1 on such machines. The
last line says whether the checkpoint was reflinked (copy-on-write, where the filesystem can) or
copied byte by byte. Page cache cannot be dropped without root-only knobs, so every variant runs
after a warm-up read of the whole source and a `sync`, so each one starts with the source cached
and no dirty pages pending. Each variant runs --repeat times; the median is reported.

    python bench/preserve_speed.py [--size-gb 2] [--dir /tmp] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.record.paths import RunPaths  # noqa: E402

CHUNK = 16 * 1024 * 1024


def make_run(root: Path, size: int) -> RunPaths:
    """A finished run folder with a `size`-byte checkpoint of random bytes (the trainer's layout)."""
    p = RunPaths(root / "bench" / "bench-20250101-000000-beef")
    p.make_dirs()
    p.run_json.write_text(json.dumps({"run_id": p.run_id, "name": "bench", "state": "COMPLETED",
                                      "created_at": "2025-01-01T00:00:00+00:00", "attempts": []}))
    p.spec.write_text("name: bench\ntrainer: lm\n")
    p.metrics.write_text(json.dumps({"final": {"step": 10, "val_loss": 1.0}, "best": {"step": 10, "val_loss": 1.0}}))
    p.metrics_history.write_text("".join(json.dumps({"step": s, "val_loss": 2.0 - s / 10}) + "\n" for s in range(11)))
    p.training_log.write_text("step 10 loss 1.0\n")
    model = p.ckpt / "best" / "model"
    model.mkdir(parents=True)
    with open(model / "model.safetensors", "wb") as fh:
        left = size
        while left > 0:
            n = min(CHUNK, left)
            fh.write(os.urandom(n))
            left -= n
    (p.ckpt / "best" / "COMPLETE").write_text("10\n")
    subprocess.run(["sync"], check=False)
    return p


def warm(path: Path) -> None:
    """Read every file once so each variant starts with the source in the page cache."""
    buf = bytearray(CHUNK)
    for f in path.rglob("*"):
        if f.is_file() and not f.is_symlink():
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
    subprocess.run(["sync"], check=False)


OUTPUTS: dict[str, str] = {}  # the last stdout of each variant


def timed(cmd: str | list[str], name: str, **kw: object) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed: {cmd}\n{res.stdout}\n{res.stderr}")
    OUTPUTS[name] = res.stdout
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=2.0, help="checkpoint size in GB (default 2)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to build the run and the copies")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each variant (median reported)")
    args = ap.parse_args()
    size = int(args.size_gb * 1e9)
    base = Path(args.dir)
    free = shutil.disk_usage(base).free
    need = int(size * 2.2) + 64 * 2**20  # the source and one copy at a time, plus slack
    if free < need:
        print(f"error: {base} has {free / 1e9:.1f} GB free; this benchmark needs {need / 1e9:.1f} GB "
              f"(use --size-gb or --dir)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="orch-preserve-bench-", dir=base))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    orch = [sys.executable, "-m", "orchestrator", "--results", str(work / "results")]
    try:
        print(f"building a run folder with a {size / 1e9:.2f} GB checkpoint in {work} ...", flush=True)
        run = make_run(work / "results", size)
        variants = {
            "cp -r + sha256sum": lambda out: timed(
                f"cp -r '{run.root}' '{out}' && cd '{out}' && find . -type f -print0 | xargs -0 sha256sum > /dev/null",
                "cp", shell=True),
            "orch preserve": lambda out: timed(orch + ["preserve", run.run_id, "--dest", str(out),
                                                       "--checkpoints", "best"], "preserve", env=env),
            "orch preserve --link": lambda out: timed(orch + ["preserve", run.run_id, "--dest", str(out), "--link",
                                                              "--checkpoints", "best"], "link", env=env),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for i in range(args.repeat):
            for name, fn in variants.items():
                out = work / f"out-{i}"
                warm(run.root)
                times[name].append(fn(out))
                shutil.rmtree(out, ignore_errors=True)
                subprocess.run(["sync"], check=False)
                print(f"  run {i + 1}/{args.repeat} {name:24s} {times[name][-1]:7.2f}s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base_t = med["cp -r + sha256sum"]
    print(f"\nmedian of {args.repeat} (source warm in page cache before each; dirty pages synced between):")
    for name, t in med.items():
        print(f"  {name:24s} {t:7.2f}s   {t / base_t:5.2f}x of cp -r + sha256sum   {size / t / 1e9:5.2f} GB/s")
    ratio = med["orch preserve"] / base_t
    verdict = "PASS" if ratio <= 1.1 else "FAIL"
    print(f"\ntarget: preserve (real copies, or reflinks where the filesystem has them) <= 1.1x cp -r + sha256sum: "
          f"{ratio:.2f}x -> {verdict}")
    how = "reflinked (copy-on-write)" if "reflinked" in OUTPUTS.get("preserve", "") else "copied byte by byte"
    print(f"orch preserve's checkpoint was {how} on this filesystem; it also fsyncs every file before renaming "
          "the bag into place, cp does not. --link (hard links, shared with the run) is shown for comparison only.")
    return 0 if ratio <= 1.1 else 1


if __name__ == "__main__":
    sys.exit(main())
