"""What the report and the exporters read from a run folder, as plain JSON-able data.

`collect_run` gives one run's index line (state, progress, key metrics, checks, sweep parameters,
age), its run-page document, the text of its two metric files (parsed by the page's own script,
so a long history costs the report no Python parsing) and its sweep-page entry. `logical_rows` /
`series` / `read_series` read a run's metric files as ONE logical run across requeued attempts:
the JSONL files are appended by every attempt, and an attempt resumed from a checkpoint logs
again from the checkpoint's step, so the rows it rolls back are dropped and the later rows win.

Everything taken from a run folder is redacted here (spec values under secret-looking keys,
token-shaped strings, credentials in log lines: the rules of `orch preserve` and of the failure
diagnosis) so no page or export carries a secret; HTML escaping is the page writer's job.
Nothing here imports torch, pandas or matplotlib.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime
from typing import Any, Iterable, Optional

from orchestrator.record.atomicio import iter_jsonl, read_json
from orchestrator.record.paths import RunPaths

MAX_EMBED = 4 * 2**20  # bytes of one metric file put in a run page (a longer file is thinned evenly)
GROUP_POINTS = 300  # per val-loss curve on a sweep page
MAX_ROWS = 200  # samples / predictions shown per run
MAX_CELL = 2000  # characters of one sample/prediction field
LOG_BYTES, LOG_LINES = 64 * 1024, 300
_SKIP_KEYS = frozenset({"step", "time", "attempt"})


# ------------------------------------------------------------------------------ secrets
def scrub(obj: Any) -> Any:
    """A structure with secret-named keys and secret-shaped values masked (orchestrator.secrets)."""
    from orchestrator.secrets import redact_mapping

    return redact_mapping(obj)


def scrub_text(text: str) -> str:
    """Text (a log line, a metric file) with credentials masked (orchestrator.secrets)."""
    from orchestrator.secrets import redact

    return redact(text)


# ------------------------------------------------------------------------------ numbers
def number(v: Any) -> Optional[float]:
    """A finite float, or None (bools, strings such as "inf", NaN and tensors' leftovers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _epoch(rec: dict[str, Any]) -> Optional[float]:
    ns = rec.get("created_ns")
    if isinstance(ns, int):
        return ns / 1e9
    return iso_epoch(rec.get("created_at"))


def iso_epoch(text: Any) -> Optional[float]:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


# ------------------------------------------------------------------------------ one logical run
def logical_rows(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows in file order as one logical run, and where each later attempt's rows begin.

    A row whose step is not after the previous kept row's step comes from an attempt that resumed
    from an earlier checkpoint: the rows it rolls back (step >= its step) are dropped. Returns
    (rows, boundaries), boundaries being `[{"step": s, "attempt": n}]` for each attempt after the
    first (n from the rows' `attempt` field, which the framework writes; else counted).
    """
    out: list[dict[str, Any]] = []
    bounds: list[dict[str, Any]] = []
    segment = 1
    for row in rows:
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        att = row.get("attempt")
        if out:
            prev = out[-1].get("attempt")
            rolled = out[-1]["step"] >= step
            changed = att is not None and prev is not None and att != prev
            if rolled or changed:
                while out and out[-1]["step"] >= step:
                    out.pop()
                while bounds and bounds[-1]["step"] >= step:
                    bounds.pop()
                if changed or att is None:  # not a repeated step within one attempt
                    segment += 1
                    bounds.append({"step": step, "attempt": att if att is not None else segment})
        out.append(row)
    return out, bounds


def metric_name(key: str) -> str:
    """A metric key as a name MLflow and TensorBoard both accept: `val_ppl@2x` -> `val_ppl_at_2x`."""
    out = key.replace("@", "_at_")
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in out)


def flat_numbers(row: dict[str, Any]) -> dict[str, float]:
    """A row's finite numbers; a list value (one per device, e.g. `mem_peak_gb`) becomes `key/0`,
    `key/1`...; `step`, `time` and `attempt` are left out."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if k in _SKIP_KEYS:
            continue
        if isinstance(v, list):
            for i, item in enumerate(v):
                f = number(item)
                if f is not None:
                    out[f"{k}/{i}"] = f
            continue
        f = number(v)
        if f is not None:
            out[k] = f
    return out


def series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float, Optional[float]]]]:
    """Numeric columns of logical rows: {key: [(step, value, wall time)]} (see `flat_numbers`)."""
    out: dict[str, list[tuple[int, float, Optional[float]]]] = {}
    for row in rows:
        step, t = int(row["step"]), number(row.get("time"))
        for k, f in flat_numbers(row).items():
            out.setdefault(k, []).append((step, f, t))
    return out


def _complete(path: Any) -> bytes:
    """A JSONL file's bytes up to its last newline (a torn last line is left out); b"" when missing."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return b""
    return data[: data.rfind(b"\n") + 1]


def _parse(data: bytes, path: Any) -> list[dict[str, Any]]:
    """Complete JSONL bytes as records, parsed in one json.loads call (a corrupt line falls back to
    line-by-line parsing of `path`, which skips it)."""
    if not data:
        return []
    try:
        rows = json.loads(b"[" + b",".join(line for line in data.split(b"\n") if line.strip()) + b"]")
    except ValueError:
        return list(iter_jsonl(path))
    return [r for r in rows if isinstance(r, dict)]


def read_rows(path: Any) -> list[dict[str, Any]]:
    """All records of a JSONL file (like `iter_jsonl`: a torn last line and corrupt lines are left out)."""
    return _parse(_complete(path), path)


def _text(data: bytes, max_bytes: int) -> tuple[str, int]:
    """Complete JSONL bytes as text for the page's script to parse, thinned past `max_bytes` (every
    k-th line, the last kept) with token-shaped strings masked; and the number of lines."""
    count = data.count(b"\n")
    if len(data) > max_bytes:
        lines = data.split(b"\n")[:-1]
        k = -(-len(data) // max_bytes)
        data = b"\n".join(lines[::k] + ([lines[-1]] if (len(lines) - 1) % k else [])) + b"\n"
    from orchestrator.secrets import redact_jsonl

    return redact_jsonl(data.decode("utf-8", "replace")), count


def raw_rows(path: Any, max_bytes: int) -> tuple[str, int]:
    """A JSONL file as text for the page's script (see `_text`), and its number of complete lines."""
    return _text(_complete(path), max_bytes)


def read_series(paths: RunPaths) -> dict[str, Any]:
    """A run's scalars as one logical run: {"train": series, "eval": series, "boundaries": [...]}"""
    train, b1 = logical_rows(read_rows(paths.fast("diagnostics")))
    ev, b2 = logical_rows(read_rows(paths.fast("metrics_history")))
    return {"train": series(train), "eval": series(ev), "boundaries": b1 or b2,
            "train_rows": train, "eval_rows": ev}


# ------------------------------------------------------------------------------ the index row
def _params(rec: dict[str, Any]) -> dict[str, Any]:
    sp = rec.get("sweep_point")
    if not isinstance(sp, dict):
        return {}
    return {str(k): (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in sp.items()}


def index_row(view: Any, summary: dict[str, Any], best: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """One index line: `summary` is `orch status`'s summary of the run (states refreshed the same way)."""
    rec = view.record
    m = summary.get("metrics") or {}
    checks = rec.get("checks") if isinstance(rec.get("checks"), dict) else {}
    return {
        "id": summary["run_id"],
        "name": summary["name"],
        "group": view.run.paths.group,
        "state": summary["state"],
        "step": summary["step"] if number(summary["step"]) is not None else None,
        "total": summary["total_steps"] if number(summary["total_steps"]) is not None else None,
        "progress": summary["progress"],
        "train_loss": number(m.get("train_loss")),
        "val_loss": number(m.get("val_loss")),
        "val_ppl": number(m.get("val_ppl")),
        "best_val_loss": number((best or {}).get("val_loss")),
        "tok_s": number(summary["tokens_per_sec"]),
        "checks": summary["checks"],
        "checks_passed": checks.get("passed") if isinstance(checks.get("passed"), bool) else None,
        "attempts": summary["attempts"],
        "failure": summary["failure"],
        "reason": scrub_text(str(summary["reason"])) if summary["reason"] else None,
        "params": _params(rec),
        "sweep": rec.get("sweep_id"),
        "created": _epoch(rec),
        "ended": iso_epoch(rec.get("ended_at")),
        "beat": number(view.heartbeat.get("time")) if summary["state"] in ("RUNNING", "STALLED") else None,
        "backend": rec.get("backend"),
    }


# ------------------------------------------------------------------------------ the run page
def spec_text(paths: RunPaths) -> str:
    """spec.yaml as written, for the run page; re-dumped with secrets masked when it may hold one."""
    try:
        with open(paths.fast("spec"), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return ""
    if scrub_text(text) == text:
        return text
    import yaml

    spec = read_spec(paths)
    return yaml.safe_dump(scrub(spec), sort_keys=False) if spec else "(spec.yaml could not be read)"


def read_spec(paths: RunPaths) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(paths.fast("spec"), "rb") as fh:
            data = yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _head_jsonl(path: Any, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The first `limit` records (strings cut to MAX_CELL), and whether there were more."""
    out: list[dict[str, Any]] = []
    for rec in iter_jsonl(path):
        if len(out) >= limit:
            return out, True
        out.append({k: (v[:MAX_CELL] + "..." if isinstance(v, str) and len(v) > MAX_CELL else v)
                    for k, v in rec.items()})
    return out, False


def _logs(paths: RunPaths, attempt: int, have: set[str]) -> list[dict[str, Any]]:
    """Tails of the training log, the current attempt's stdout/stderr and the scheduler's log."""
    from orchestrator.checks.diagnose import read_tail

    names = ["training.log", f"stderr-{attempt}.log", f"stdout-{attempt}.log", "scheduler.log"]
    if attempt > 1:
        names.append(f"stderr-{attempt - 1}.log")
    out = []
    for name in names:
        if f"logs/{name}" not in have:
            continue
        f = os.path.join(paths.dir, "logs", name)
        try:
            size = os.path.getsize(f)
        except OSError:
            continue
        lines = read_tail(f, LOG_BYTES, LOG_LINES)
        out.append({"file": os.path.relpath(f, paths.dir), "size": size,
                    "lines": [scrub_text(line) for line in lines]})
    return out


def _floats(d: Any) -> dict[str, Any]:
    return {k: v for k, v in d.items() if number(v) is not None} if isinstance(d, dict) else {}


def best_row(metrics: dict[str, Any], eval_rows: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """metrics.json `best`, else the logical history row with the best checkpoint metric."""
    if isinstance(metrics.get("best"), dict) and metrics["best"]:
        return metrics["best"]
    ck = spec.get("checkpoint") if isinstance(spec.get("checkpoint"), dict) else {}
    key, mode = str(ck.get("metric") or "val_loss"), str(ck.get("mode") or "min")
    rows = [r for r in eval_rows if number(r.get(key)) is not None]
    if not rows:
        return {}
    pick = max if mode == "max" else min
    return pick(rows, key=lambda r: float(r[key]))


def scaling(metrics: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Parameters, tokens, tokens per parameter and the Chinchilla ratio (LM trainer fields)."""
    params = metrics.get("params") if isinstance(metrics.get("params"), dict) else record.get("params")
    params = params if isinstance(params, dict) else {}
    total = number(params.get("total")) or number(metrics.get("n_params"))
    tokens = number(metrics.get("tokens_seen"))
    chin = metrics.get("chinchilla") if isinstance(metrics.get("chinchilla"), dict) else {}
    tpp = number(metrics.get("tokens_per_param")) or (tokens / total if tokens and total else None)
    optimal = number(chin.get("tokens_per_param_optimal")) or 20.0
    return {"params": total, "non_embedding": number(params.get("non_embedding")), "tokens_seen": tokens,
            "tokens_per_param": tpp, "ratio": number(chin.get("ratio_to_optimal")) or (tpp / optimal if tpp else None),
            "optimal_tpp": optimal, "verdict": chin.get("verdict") if isinstance(chin.get("verdict"), str) else None}


def listing(run_dir: str) -> dict[str, tuple[int, int]]:
    """{relative path: (mtime_ns, size)} of the files in the run folder, eval/ and logs/ (hidden
    files left out): three directory reads instead of a failed open per missing file."""
    out: dict[str, tuple[int, int]] = {}
    for sub in ("", "eval", "logs"):
        try:
            entries = os.scandir(os.path.join(run_dir, sub) if sub else run_dir)
        except OSError:
            continue
        with entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_file():
                        st = e.stat()
                        out[f"{sub}/{e.name}" if sub else e.name] = (st.st_mtime_ns, st.st_size)
                except OSError:
                    continue
    return out


def collect_run(view: Any, summary: dict[str, Any], present: Optional[Iterable[str]] = None
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], dict[str, Any]]:
    """One run's index row, run-page document, the metric files' text for the page's script
    (`{"train": ..., "eval": ...}`: the page parses them, so a long history costs Python no parsing)
    and its sweep-page entry, all redacted.

    `summary` is `orch status`'s summary of the refreshed view, so the report shows the same
    effective states (STALLED, vanished jobs) as `orch status`. The history is parsed here only
    when metrics.json (written at the end) does not give the best and final evaluations.
    """
    paths: RunPaths = view.run.paths
    rec = view.record
    have = set(present) if present is not None else set(listing(paths.dir))
    metrics = read_json(paths.metrics, default={}) if "eval/metrics.json" in have else {}
    metrics = metrics if isinstance(metrics, dict) else {}
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    final = metrics.get("final") if isinstance(metrics.get("final"), dict) else {}
    spec = spec_text(paths) if "spec.yaml" in have else ""
    history = _complete(paths.fast("metrics_history")) if "eval/metrics_history.jsonl" in have else b""
    if not best or not final:
        rows, _ = logical_rows(_parse(history, paths.fast("metrics_history")))
        # the checkpoint metric decides "best"; parse the spec only when it may name another one
        best = best or best_row(metrics, rows, read_spec(paths) if "metric:" in spec or "mode:" in spec else {})
        final = final or (rows[-1] if rows else {})
    row = index_row(view, summary, best)
    scale = scaling(metrics, rec)
    checks = read_json(paths.fast("checks"), default={}) if "checks.json" in have else {}
    checks = checks if isinstance(checks, dict) else {"results": checks} if isinstance(checks, list) else {}
    prov = read_json(paths.fast("provenance"), default={}) if "provenance.json" in have else {}
    prov = prov if isinstance(prov, dict) else {}
    attempts = [a for a in (rec.get("attempts") or []) if isinstance(a, dict)]
    n = attempts[-1].get("n") if attempts else 1
    samples, more_s = _head_jsonl(paths.samples, MAX_ROWS) if "eval/samples.jsonl" in have else ([], False)
    preds, more_p = _head_jsonl(paths.predictions, MAX_ROWS) if "eval/predictions.jsonl" in have else ([], False)
    failure = view.failure or rec.get("failure")
    train_text, train_lines = raw_rows(paths.fast("diagnostics"), MAX_EMBED) if "logs/train_diagnostics.jsonl" in have else ("", 0)
    eval_text, eval_lines = _text(history, MAX_EMBED)
    doc = scrub({
        "row": row,
        "run_dir": paths.dir,
        "record": {k: rec.get(k) for k in ("backend", "created_at", "ended_at", "stop_reason", "state_reason",
                                            "pending_reason", "exit_code", "sweep_id", "sweep_index", "created_by")},
        "reason": view.reason,
        "heartbeat": view.heartbeat,
        "attempts": attempts,
        "resumes": rec.get("resumes") if isinstance(rec.get("resumes"), list) else [],
        "failure": failure if isinstance(failure, dict) else None,
        "lines": {"train": train_lines, "eval": eval_lines},
        "best": best, "final": final,
        "metrics": metrics,
        "scaling": scale,
        "checks": checks,
        "spec": spec,
        "provenance": prov,
        "samples": samples, "samples_more": more_s,
        "predictions": preds, "predictions_more": more_p,
        "logs": _logs(paths, n if isinstance(n, int) and n > 0 else 1, have),
    })
    entry = {"best": _floats(doc["best"]), "final": _floats(doc["final"]), "scaling": doc["scaling"]}
    return doc["row"], doc, {"train": train_text, "eval": eval_text}, entry
