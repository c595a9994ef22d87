"""The README.md of a preserved bundle, generated from the run's own files.

Researchers used to write this by hand: configuration, key results, checks, diagnostics, GPU
memory, what went wrong. Generating it makes every bundle self-explaining. The text depends
only on the run's files (no timestamps of its own), so re-preserving an unchanged run yields
the same README and the same manifest. The bundle passes the finished text through
`orchestrator.secrets.redact` (a failure's evidence or a diagnostics value may quote a secret).
"""
from __future__ import annotations

import math
import re
import statistics
from typing import Any, Iterable, Mapping, Sequence

from orchestrator.analysis.metrics import flatten, is_number
from orchestrator.analysis.rundata import RunData

# The control plane's sections shown as configuration; a trainer's own sections (any other mapping) come first.
_CONFIG_SECTIONS = ("train", "eval", "checkpoint", "early_stopping", "resources")
_THROUGHPUT = re.compile(r"(tokens?_per_s|tok_s|samples_per_s|throughput|it_per_s|step_time)", re.I)
_MEMORY = re.compile(r"(mem|memory)", re.I)
_SKIP_DIAG = {"step", "epoch", "time", "timestamp", "elapsed", "attempt"}


def fmt(v: Any) -> str:
    """A compact, table-safe rendering of one value."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v.is_integer() and abs(v) < 1e15 or 1000 <= abs(v) < 1e9:
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.0f}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        v = ", ".join(str(x) for x in v) if len(v) <= 8 else f"{len(v)} items"
    text = str(v).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c.replace("|", "\\|") for c in r) + " |"
              for r in rows]
    return "\n".join(lines)


def config_rows(spec: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The spec's configuration as (key, value) rows, secrets masked: the README's table and the
    RO-Crate's parameters (preserve.crate)."""
    from orchestrator.secrets import redact_mapping

    spec = redact_mapping(dict(spec))  # a secret-named key's value never reaches the README table
    rows: list[tuple[str, Any]] = []
    for key in ("name", "trainer", "description", "seed", "backend", "tags"):
        if spec.get(key) not in (None, "", []):
            rows.append((key, spec[key]))
    from orchestrator.spec.sections import Spec

    trainer_sections = [k for k in spec if k not in Spec.model_fields]
    for section in trainer_sections + list(_CONFIG_SECTIONS):
        block = spec.get(section)
        if isinstance(block, Mapping):
            rows += [(f"{section}.{k}", v) for k, v in flatten(block).items() if v not in (None, [], {}, "")]
    return rows


def _results_rows(d: RunData) -> list[tuple[str, Any, Any]]:
    final, best = d.final(train=False), d.best()  # evaluation results; training's are summarised below
    keys = list(dict.fromkeys(list(final) + list(best)))
    rows = []
    for k in keys:
        f, b = final.get(k), best.get(k)
        if any(is_number(v) or (isinstance(v, str) and len(v) < 60) for v in (f, b)):
            rows.append((k, "" if f is None else f, "" if b is None else b))
    return rows


def _checks_section(d: RunData) -> str:
    c = d.checks
    results = c.get("results") if isinstance(c.get("results"), list) else []
    if not c:
        return "_No checks.json: run `orch check` on the run to judge it._"
    verdict = c.get("passed")
    head = f"**Verdict: {'PASS' if verdict else 'FAIL' if verdict is not None else 'unknown'}**"
    if c.get("checked_at"):
        head += f" (checked {c['checked_at']})"
    rows = []
    for r in results:
        if isinstance(r, Mapping):
            status = str(r.get("status", r.get("passed", "?")))
            rows.append((str(r.get("name", r.get("expr", "?"))), str(r.get("severity", "")),
                         status.upper(), str(r.get("detail") or r.get("message") or "")))
    return head + ("\n\n" + table(["check", "severity", "status", "detail"], rows) if rows else "")


def _attempts_section(d: RunData) -> str:
    rec = d.record
    lines = [f"- state: **{d.state}**"]
    if rec.get("stop_reason"):
        lines.append(f"- stop reason: {fmt(rec['stop_reason'])}")
    failure = rec.get("failure")
    if isinstance(failure, Mapping) and failure:
        lines.append(f"- failure class: **{failure.get('class', '?')}**")
        ev = failure.get("evidence") or failure.get("summary")
        if ev:
            ev_text = "; ".join(map(str, ev)) if isinstance(ev, list) else str(ev)
            lines.append(f"- evidence: `{ev_text[:300]}`")
    attempts = [a for a in rec.get("attempts") or [] if isinstance(a, Mapping)]
    lines.append(f"- attempts: {len(attempts)}")
    text = "\n".join(lines)
    if attempts:
        cols = [c for c in ("n", "job_id", "state", "exit_code", "host", "started_at", "ended_at", "cause")
                if any(c in a for a in attempts)]
        text += "\n\n" + table(cols, [[a.get(c, "") for c in cols] for a in attempts])
    return text


def _numeric_summary(rows: list[dict[str, Any]], keys: Iterable[str]) -> list[tuple[str, Any, Any, Any, Any, Any]]:
    out = []
    for k in keys:
        vals = [float(r[k]) for r in rows if is_number(r.get(k)) and math.isfinite(float(r[k]))]
        if vals:
            out.append((k, vals[0], vals[-1], min(vals), max(vals), statistics.fmean(vals)))
    return out


def diagnostics_sections(d: RunData) -> tuple[str, str]:
    """(diagnostics summary, throughput and memory) as Markdown."""
    rows = d.diagnostics
    if not rows:
        return "_No logs/train_diagnostics.jsonl recorded._", "_Not recorded._"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    numeric = [k for k in keys if k not in _SKIP_DIAG and any(is_number(r.get(k)) for r in rows)]
    perf = [k for k in numeric if _THROUGHPUT.search(k) or _MEMORY.search(k)]
    diag = [k for k in numeric if k not in perf]
    hdr = ["metric", "first", "last", "min", "max", "mean"]
    parts = [f"{len(rows)} records, steps {rows[0].get('step', '?')} to {rows[-1].get('step', '?')}."]
    if diag:
        parts.append(table(hdr, _numeric_summary(rows, diag)))
    other = {k: rows[-1][k] for k in keys if k not in numeric and k not in _SKIP_DIAG and k in rows[-1]}
    if other:
        parts.append("Latest non-numeric diagnostics (e.g. dominant predictions):\n\n"
                     + table(["field", "value"], [(k, fmt(v)) for k, v in other.items()]))
    perf_text = table(hdr, _numeric_summary(rows, perf)) if perf else "_Not recorded._"
    if perf:
        mem = [k for k in perf if _MEMORY.search(k)]
        peaks = [max(float(r[k]) for r in rows if is_number(r.get(k))) for k in mem if any(is_number(r.get(k)) for r in rows)]
        if peaks:
            perf_text += f"\n\nPeak memory over the run: **{fmt(max(peaks))}** (units as logged)."
    return "\n\n".join(parts), perf_text


def _length_section(d: RunData) -> str | None:
    keys = d.length_keys()
    if not keys:
        return None
    final, best = d.final(), d.best()
    rows = [] if any(m == 1 for m, _ in keys) else [("1x (val_ppl)", final.get("val_ppl", ""), best.get("val_ppl", ""))]
    rows += [(f"{m:g}x", final.get(k, ""), best.get(k, "")) for m, k in keys]
    return table(["length", "final", "best"], rows)


def render_readme(d: RunData, *, checkpoints: str, roles: Mapping[str, str], plots: Sequence[str],
                  files: Mapping[str, int], skipped: Sequence[str]) -> str:
    """The README.md of the bundle of `d`; `files` maps bundle paths to sizes."""
    rec, prov = d.record, d.provenance
    git = prov.get("git") if isinstance(prov.get("git"), Mapping) else {}
    out = [f"# {d.name}: preserved run `{d.run_id}`", ""]
    if d.spec.get("description"):
        out += [str(d.spec["description"]), ""]
    facts = [("run id", d.run_id), ("state", d.state), ("created", rec.get("created_at", "")),
             ("ended", rec.get("ended_at", "")), ("backend", rec.get("backend", d.spec.get("backend", ""))),
             ("git commit", (git or {}).get("commit", "")), ("git dirty", (git or {}).get("dirty", "")),
             ("host", prov.get("hostname", "")), ("sweep point", ", ".join(f"{k}={v}" for k, v in d.sweep_point.items()))]
    out += [table(["", ""], [(k, v) for k, v in facts if v not in ("", None)]), ""]

    out += ["## Key results", ""]
    res = _results_rows(d)
    out += [table(["metric", "final", "best"], res) if res else "_No eval/metrics.json or metrics history._", ""]
    length = _length_section(d)
    lengths_png = "plots/length_generalization.png"
    if length:
        out += ["### Length generalization (perplexity vs position multiple)", "", length, ""]
        if lengths_png in plots:  # its evolution over the evaluations: the figure a window study reports
            out += [f"![perplexity at k x the training window across evaluations]({lengths_png})", ""]

    out += ["## Checks", "", _checks_section(d), ""]
    out += ["## State, failure and attempts", "", _attempts_section(d), ""]
    diag, perf = diagnostics_sections(d)
    out += ["## Diagnostics summary", "", diag, ""]
    out += ["## Throughput and GPU memory", "", perf, ""]

    out += ["## Plots", ""]
    out += [f"![{p}]({p})" for p in plots if not (length and p == lengths_png)] or ["_No training curves were logged._"]
    out += [""]

    out += ["## Configuration", ""]
    cfg = config_rows(d.spec)
    out += [table(["key", "value"], cfg) if cfg else "_No spec.yaml._", "",
            "The full resolved spec is in `spec.yaml`; provenance (command, git, versions) in `provenance.json`.", ""]

    out += ["## Checkpoints", "", f"Policy: `{checkpoints}`."]
    for role, folder in roles.items():
        out.append(f"- {role}: `ckpt/{folder}/`")
    out += [""]

    total = sum(files.values())
    out += ["## Files", "", f"{len(files)} files, {_human(total)}. The bundle is a BagIt bag: these files are its payload "
            "(`data/`), each listed with its sha256 in `../manifest-sha256.txt`; `ro-crate-metadata.json` describes "
            "the run (RO-Crate 1.1).", ""]
    if skipped:
        out += ["Not copied (secrets, symlinks leaving the run, runtime files): " + ", ".join(f"`{s}`" for s in skipped), ""]

    out += ["## Verify and load", "", "In the bundle folder (the one holding `bagit.txt`):", "", "```sh",
            "orch verify .                 # or: sha256sum -c manifest-sha256.txt", "bagit.py --validate .          # any BagIt tool",
            "```", "", "In `data/`:", "",
            "```python", "import json", "import pandas as pd", "",
            'history = pd.read_json("eval/metrics_history.jsonl", lines=True)',
            'diagnostics = pd.read_json("logs/train_diagnostics.jsonl", lines=True)',
            'metrics = json.load(open("eval/metrics.json"))',
            "# or, with orch installed: import orchestrator; data = orchestrator.load('.'); data.history",
            "```", ""]
    return "\n".join(out)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
