"""How long does `orch report` take on 10,000 runs, and how fast does Chromium open the index?

Builds a results tree with bench/status_scale.py's generator (mixed states, L-line metrics
histories hard-linked into every run), adds what a real run also has (spec.yaml, a training
diagnostics log, sweep points), then times `orch report --no-poll` end to end (a subprocess,
Python start-up included): a first build, and a rebuild with nothing changed (the monitor's case).
Finally it opens index.html from disk in headless Chromium and reads the Performance API:
DOMContentLoaded (the page's script has drawn the table by then) and first contentful paint.

    python bench/report_scale.py [--runs 10000] [--lines 50] [--diag-lines 500] [--no-browser]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from status_scale import build  # noqa: E402

SPEC = """name: {name}
trainer: lm
model: {{arch: gpt2, n_layer: 4, n_head: 4, d_model: 128, max_seq_len: 128}}
tokenizer: {{type: char}}
data: {{builtin: arith}}
train: {{max_steps: 20000, batch_size: 16, lr: 0.001, log_every: 10}}
eval: {{every: 250, length_multiples: [2, 4]}}
checkpoint: {{every: 1000, keep_last: 2}}
checks: ["best.val_loss < 2.5"]
"""


def augment(root: Path, diag_lines: int, seed: int = 0) -> None:
    """spec.yaml, train diagnostics (shared, hard-linked), a sweep point in each run.json and, for
    completed runs, eval/metrics.json."""
    rng = random.Random(seed)
    diag = root / ".diag.jsonl"
    with open(diag, "w") as fh:
        for i in range(diag_lines):
            fh.write(json.dumps({"step": i * 10, "loss": 3.0 - i * 1e-3, "lr": 1e-3, "grad_norm": 1.0 + rng.random(),
                                 "tokens_per_sec": 12000.0 + rng.random() * 100, "step_time": 0.05, "attempt": 1}) + "\n")
    specs: dict[str, Path] = {}
    for group in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        spec = root / f".spec-{group.name}.yaml"
        spec.write_text(SPEC.format(name=group.name))
        specs[group.name] = spec
        for d in group.iterdir():
            os.link(spec, d / "spec.yaml")
            (d / "logs").mkdir(exist_ok=True)
            os.link(diag, d / "logs" / "train_diagnostics.jsonl")
            rec = json.loads((d / "run.json").read_text())
            rec["sweep_point"] = {"train.lr": rng.choice([1e-4, 3e-4, 1e-3, 3e-3]), "model.d_model": rng.choice([64, 128, 256])}
            if rec["state"] == "COMPLETED":  # the trainer's summary at the end (trainers/lm/trainer.py)
                best = {"step": 9000, "val_loss": 2.0 + rng.random(), "val_ppl": 8.0, "val_ppl@2x": 9.5}
                (d / "eval" / "metrics.json").write_text(json.dumps({
                    "stop_reason": "max_steps", "steps": 20000, "tokens_seen": 40960000, "final": best, "best": best,
                    "params": {"total": 800000, "non_embedding": 790000}, "tokens_per_param": 51.2,
                    "chinchilla": {"tokens_per_param_optimal": 20.0, "ratio_to_optimal": 2.56, "verdict": "over-trained"}}))
            rec["created_at"] = "2026-11-22T00:00:00+00:00"
            (d / "run.json").write_text(json.dumps(rec))


def time_report(results: Path, out: Path) -> tuple[float, float, str]:
    """(wall s, CPU s of orch and its worker processes, its output line)."""
    env = {**os.environ, "ORCH_RESULTS": str(results)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "orchestrator", "report", "--no-poll", "--out", str(out)],
                         env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, res.stdout.strip()


def browser_load(index: Path, repeat: int) -> list[dict[str, float]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    out = []
    try:
        for _ in range(repeat):
            driver.get(index.as_uri())
            time.sleep(0.5)  # paint entries are recorded after the frame is presented
            out.append(driver.execute_script("""
                const nav = performance.getEntriesByType('navigation')[0];
                const paint = {};
                performance.getEntriesByType('paint').forEach(p => paint[p.name] = p.startTime);
                return {dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
                        fp: paint['first-paint'] || null, fcp: paint['first-contentful-paint'] || null,
                        rows: document.querySelectorAll('#runs .row').length};"""))
            driver.get("about:blank")
    finally:
        driver.quit()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--lines", type=int, default=50, help="metrics history lines per run")
    ap.add_argument("--diag-lines", type=int, default=500, help="training log rows per run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="orch-report-bench-"))
    try:
        results = tmp / "results"
        results.mkdir()
        t0 = time.perf_counter()
        build(results, args.runs, args.lines)
        augment(results, args.diag_lines)
        print(f"tree: {args.runs} runs, {args.lines}-line histories, {args.diag_lines}-row training logs "
              f"(built in {time.perf_counter() - t0:.1f} s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        out = tmp / "site"
        for what in ("first build", "rebuild with nothing changed"):
            wall, cpu, line = time_report(results, out)
            print(f"orch report, {what}: {wall:.2f} s wall, {cpu:.2f} s CPU over all processes  ({line})")
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"site: {size / 2**20:.1f} MiB, index.html {(out / 'index.html').stat().st_size / 2**20:.2f} MiB")
        if not args.no_browser and not shutil.which("chromedriver"):
            print("chromium load: skipped (no chromedriver; `make browser-deps` installs it)")
        elif not args.no_browser:
            loads = browser_load(out / "index.html", args.repeat)
            for i, m in enumerate(loads):
                print(f"chromium load #{i + 1}: DOMContentLoaded {m['dcl']:.0f} ms, first paint {m['fp'] or float('nan'):.0f} ms, "
                      f"first contentful paint {m['fcp'] or float('nan'):.0f} ms, load {m['load']:.0f} ms, "
                      f"{m['rows']} rows in the DOM (virtualized)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
