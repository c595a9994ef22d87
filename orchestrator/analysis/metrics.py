"""Metric names, values and directions: one definition for checks, compare, README and trainers.

Why: `orch check` and `orch compare` used to flatten metrics differently (one kept nested
history values, the other dropped them) and to guess a metric's direction by substring, so
`mem_peak_gb` and `system_time` counted as higher-is-better and `best.<metric>` was wrong.

Names. Nested records are flattened with dots (`{"latent": {"f1": 0.3}}` -> `latent.f1`) by
`flatten`, everywhere. The final value of a metric (`final_values`) is, newest source last:
the newest train-diagnostics record holding it, the newest metrics-history record holding it,
metrics.json's top level, then its `last`/`latest`/`final` sections.

Direction (`direction`). Explicit, never guessed by substring: the name's last dotted component
(`latent.first_token_acc` -> `first_token_acc`, `val_ppl@2x` -> `val_ppl`), lower-cased, is
looked up in `DIRECTIONS` (exact names), then matched against `SUFFIXES` and `PREFIXES`
(whole `_`-separated words: `kce_loss` is a loss, `lossy_thing` is not). A spec overrides or
extends it with `metrics: {direction: {my_score: max}}` (full dotted name or last component);
the checkpoint's and early stopping's explicit `metric`/`mode` count as statements too.
Unknown -> None: no `best.<name>` value is computed and checks on it say why.

    lower is better: loss, nll, ppl, perplexity, error, err, wer, cer, time, seconds, latency,
        memory, mem; *_loss *_nll *_ppl *_perplexity *_error *_err *_wer *_cer *_time
        *_seconds *_secs *_ms *_latency *_memory *_mem *_gap (train_val_gap);
        mem_* memory_* gpu_mem_* peak_mem_* max_memory_*
    higher is better: acc, accuracy, f1, em, exact_match, tok_per_s, tokens_per_sec,
        tokens_per_s, samples_per_sec, throughput, mfu, effective_rank, effective_rank_ratio,
        diversity, bleu, rouge, rouge1, rouge2, rougel, auc, precision, recall, top1, top5;
        *_acc *_accuracy *_f1 *_em *_exact_match *_per_sec *_per_s *_per_second *_throughput
        *_mfu *_diversity *_bleu *_auc *_precision *_recall *_top1 *_top5
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

MIN, MAX = "min", "max"

DIRECTIONS: dict[str, str] = {
    **{k: MIN for k in ("loss", "nll", "ppl", "perplexity", "error", "err", "wer", "cer", "time", "seconds",
                        "latency", "memory", "mem", "step_time")},
    **{k: MAX for k in ("acc", "accuracy", "f1", "em", "exact_match", "tok_per_s", "tokens_per_sec", "tokens_per_s",
                        "samples_per_sec", "throughput", "mfu", "effective_rank", "effective_rank_ratio", "diversity",
                        "bleu", "rouge", "rouge1", "rouge2", "rougel", "auc", "precision", "recall", "top1", "top5")},
}
SUFFIXES: tuple[tuple[str, str], ...] = (
    *((s, MIN) for s in ("_loss", "_nll", "_ppl", "_perplexity", "_error", "_err", "_wer", "_cer", "_time", "_seconds",
                         "_secs", "_ms", "_latency", "_memory", "_mem", "_gap")),
    *((s, MAX) for s in ("_acc", "_accuracy", "_f1", "_em", "_exact_match", "_per_sec", "_per_s", "_per_second",
                         "_throughput", "_mfu", "_diversity", "_bleu", "_auc", "_precision", "_recall", "_top1",
                         "_top5")),
)
PREFIXES: tuple[tuple[str, str], ...] = tuple((p, MIN) for p in ("mem_", "memory_", "gpu_mem_", "peak_mem_",
                                                                 "max_memory_"))


def base_name(name: str) -> str:
    """The component a direction is decided on: last dotted part, without an `@...` qualifier."""
    return name.rsplit(".", 1)[-1].split("@", 1)[0].lower()


def direction(name: str, overrides: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """"min", "max", or None when neither the spec nor the table says (never guessed)."""
    if overrides:
        for key in (name, name.rsplit(".", 1)[-1], base_name(name)):
            if key in overrides:
                return overrides[key]
    base = base_name(name)
    if base in DIRECTIONS:
        return DIRECTIONS[base]
    for suffix, d in SUFFIXES:
        if base.endswith(suffix):
            return d
    for prefix, d in PREFIXES:
        if base.startswith(prefix):
            return d
    return None


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def spec_directions(spec: Any) -> dict[str, str]:
    """The direction statements of a spec (a Spec model or its plain dict, e.g. spec.yaml):
    early_stopping's and checkpoint's `metric`/`mode`, then `metrics.direction` (which wins)."""
    out: dict[str, str] = {}
    if spec is None:
        return out
    for section in ("early_stopping", "checkpoint"):
        sec = _get(spec, section)
        metric, mode = _get(sec, "metric"), _get(sec, "mode")
        if isinstance(metric, str) and mode in (MIN, MAX):
            out[metric] = mode
    explicit = _get(_get(spec, "metrics"), "direction")
    if isinstance(explicit, Mapping):
        out.update({str(k): v for k, v in explicit.items() if v in (MIN, MAX)})
    return out


# ------------------------------------------------------------------------------ values
_NONFINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
              "infinity": math.inf, "-infinity": -math.inf}


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def finite(v: Any) -> bool:
    return is_number(v) and math.isfinite(float(v))


def as_number(v: Any) -> Any:
    """Trainers write NaN as null and inf as "inf" (strict JSON); turn those back into floats."""
    if v is None:
        return math.nan
    if isinstance(v, str) and v.strip().lower() in _NONFINITE:
        return _NONFINITE[v.strip().lower()]
    return v


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; other values (lists, None, empty mappings) stay as they are."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def metric_values(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened scalars of a metrics record, null and "inf" read as NaN/inf (so a check on a
    NaN metric fails rather than reporting it unknown); lists and empty mappings dropped."""
    return {k: as_number(v) for k, v in flatten(obj).items()
            if v is None or isinstance(v, (bool, int, float, str))}


SECTIONS = ("final", "best", "last", "latest")


def latest_values(*sources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Each metric's newest value over `sources` (oldest source first, records in order)."""
    out: dict[str, Any] = {}
    for source in sources:
        for rec in source:
            out.update(metric_values(rec))
    return out


def metrics_json_values(metrics: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The final values eval/metrics.json states: its top level, then `last`/`latest`/`final`."""
    out: dict[str, Any] = {}
    if metrics:
        out.update(metric_values({k: v for k, v in metrics.items() if k not in SECTIONS}))
        for sec in ("last", "latest", "final"):
            if isinstance(metrics.get(sec), Mapping):
                out.update(metric_values(metrics[sec]))
    return out


def final_values(metrics: Optional[Mapping[str, Any]], history: Iterable[Mapping[str, Any]] = (),
                 diagnostics: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The final value of every metric (see the module docstring for the precedence)."""
    return {**latest_values(diagnostics, history), **metrics_json_values(metrics)}
