"""Training-curve, length-generalization and comparison plots (matplotlib, Agg backend, no display).

Used by `orch plot`, `orch compare --plot` and the bundle README. Each figure has a builder that
returns the matplotlib Figure (tests inspect its axes) and a `*_png` twin that renders it to bytes;
callers write the bytes atomically. PNG metadata carries no version or date, so the same run gives
the same bytes and re-preserving it stays a no-op.

What is drawn, from the run's own files (`RunData`):
- `training_figure`: train loss at every logged step (logs/train_diagnostics.jsonl, written every
  `train.log_every` steps) with the evaluations over it (eval/metrics_history.jsonl: val loss and
  the train loss measured at evaluation), validation perplexity, learning rate, gradient norm and
  throughput; a dashed vertical line where each later attempt (a resume or requeue) began.
- `length_figure`: when `eval.length_multiples` is set, perplexity at each multiple of the
  training window across the evaluations (left), and perplexity against the length multiple, one
  curve per evaluation coloured by its step (right): whether longer contexts improve as training goes.
- `compare_figure`: one panel per metric, one line per run, labelled by what differs between runs.
"""
from __future__ import annotations

import io
import math
from typing import Any, Iterable, Sequence

from orchestrator.errors import UserError
from orchestrator.analysis.metrics import finite
from orchestrator.analysis.rundata import RunData


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def series(rows: Iterable[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(xs, ys) of the rows where both are finite numbers."""
    xs, ys = [], []
    for r in rows:
        if finite(r.get(x)) and finite(r.get(key)):
            xs.append(float(r[x]))
            ys.append(float(r[key]))
    return xs, ys


def metric_series(d: RunData, metric: str) -> tuple[list[float], list[float]]:
    """A metric against step: from the evaluations when they hold it, else from the train diagnostics
    (`train_loss` falls back to the diagnostics' per-step `loss`)."""
    xs, ys = series(d.eval_rows, metric)
    if not xs:
        xs, ys = series(d.train_rows, "loss" if metric == "train_loss" else metric)
    return xs, ys


# ------------------------------------------------------------------------------ axis labels
_UNITS = (("tokens_per_sec", "tokens/s"), ("tok_per_s", "tokens/s"), ("samples_per_sec", "samples/s"),
          ("_per_sec", "per s"), ("step_time", "s/step"), ("_seconds", "s"), ("_secs", "s"), ("_ms", "ms"),
          ("_gb", "GB"), ("_mb", "MB"), ("_gib", "GiB"), ("_mib", "MiB"))


def axis_label(metric: str, per_token: bool = False) -> str:
    """A y-axis label with its unit: `val_loss (nats/token)` for a token-level cross-entropy,
    `val_ppl (log scale)`, `tokens_per_sec (tokens/s)`; the bare name when the unit is unknown."""
    base = metric.rsplit(".", 1)[-1].split("@", 1)[0].lower()
    if base == "lr":
        return "learning rate"
    if base == "grad_norm":
        return "gradient norm (L2)"
    if per_token and (base == "loss" or base.endswith("_loss")):
        return f"{metric} (nats/token)"
    if base in ("ppl", "perplexity") or base.endswith(("_ppl", "_perplexity")):
        return f"{metric} (log scale)"
    for suffix, unit in _UNITS:
        if base.endswith(suffix):
            return f"{metric} ({unit})"
    return metric


def log_y(ax: Any) -> None:
    """A logarithmic y axis with plain tick labels (`3.5`, not `3.5 x 10^0`)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")

    def minor(v: float, _pos: int) -> str:  # 2, 3 and 5 x 10^k only, unless the axis spans < 0.4 decades
        lo, hi = ax.get_ylim()
        lead = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        return f"{v:.3g}" if lo > 0 and math.log10(hi / lo) < 0.4 or lead in (2, 3, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _per_token(d: RunData) -> bool:
    """Whether the run's losses are cross-entropies per token (its trainer has a tokenizer)."""
    return isinstance(d.spec.get("tokenizer"), dict)


def attempt_lines(ax: Any, d: RunData, label: bool = False) -> int:
    """Dashed vertical lines where each attempt after the first began; how many."""
    for i, (n, step) in enumerate(d.attempt_starts):
        ax.axvline(step, color="0.35", linestyle="--", linewidth=1, zorder=1, gid=f"attempt-{n}",
                   label="attempt start (resume)" if label and i == 0 else None)
        ax.annotate(f"attempt {n}", (step, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -10),
                    textcoords="offset points", fontsize=7, color="0.35")
    return len(d.attempt_starts)


# ------------------------------------------------------------------------------ one run
def training_figure(d: RunData) -> Any | None:
    """The training curves of one run (see the module docstring); None when nothing was logged."""
    per_token = _per_token(d)
    train_x, train_y = series(d.train_rows, "loss")
    eval_train = series(d.eval_rows, "train_loss")
    loss_lines: list[tuple[str, tuple[list[float], list[float]], dict[str, Any]]] = []
    if train_x:
        loss_lines.append(("train loss (every logged step)", (train_x, train_y), {"linewidth": 1.2, "alpha": 0.85}))
        loss_lines.append(("train loss (evaluation)", eval_train, {"linestyle": "none", "marker": "x", "markersize": 5}))
    else:
        loss_lines.append(("train loss (evaluation)", eval_train, {"marker": "x", "markersize": 5}))
    loss_lines.append(("val loss (evaluation)", series(d.eval_rows, "val_loss"), {"marker": "o", "markersize": 5}))
    panels: list[tuple[str, str, list[tuple[str, tuple[list[float], list[float]], dict[str, Any]]], bool]] = [
        ("loss", axis_label("loss", per_token), loss_lines, False),
        ("validation perplexity", "perplexity (log scale)",
         [("val_ppl (evaluation)", series(d.eval_rows, "val_ppl"), {"marker": "o", "markersize": 4})], True),
        ("learning rate", "learning rate", [("lr", series(d.train_rows, "lr"), {})], False),
        ("gradient norm", "gradient norm (L2, log scale)", [("grad_norm", series(d.train_rows, "grad_norm"), {})], True),
        ("throughput", "tokens/s", [("tokens_per_sec", series(d.train_rows, "tokens_per_sec"), {})], False),
    ]
    panels = [p for p in panels if any(xy[0] for _, xy, _ in p[2])]
    if not panels:
        return None
    plt = _plt()
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.8 * rows), squeeze=False, layout="constrained")
    xmax = max(max(xy[0]) for p in panels for _, xy, _ in p[2] if xy[0])
    for i, (ax, (title, ylabel, lines, logy)) in enumerate(zip(axes.flat, panels)):
        for label, (xs, ys), style in lines:
            if xs:
                ax.plot(xs, ys, label=label, **style)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, xmax * 1.02 or 1)
        if logy and all(v > 0 for _, (xs, ys), _ in lines for v in ys):
            log_y(ax)
        ax.grid(alpha=0.3)
        attempt_lines(ax, d, label=i == 0)
        if i == 0 or len(lines) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{d.name} ({d.run_id}, {d.state})", fontsize=10)
    return fig


def training_curves(d: RunData) -> bytes | None:
    """`training_figure` as PNG bytes."""
    fig = training_figure(d)
    return None if fig is None else png_bytes(fig)


# ------------------------------------------------------------------------------ length generalization
def _multiples(d: RunData) -> list[tuple[float, str]]:
    """(multiple, key) of every length this run evaluated; 1x is `val_ppl@1x` or else `val_ppl`."""
    keys = {m: k for m, k in d.length_keys()}
    if 1.0 not in keys:
        keys[1.0] = "val_ppl"
    return sorted(keys.items())


def _window(d: RunData) -> int | None:
    model = d.spec.get("model")
    w = model.get("max_seq_len") if isinstance(model, dict) else None
    return w if isinstance(w, int) and not isinstance(w, bool) else None


def _at_step(d: RunData, at: str) -> float | None:
    step = d.at(at).get("step")
    return float(step) if finite(step) else None


def length_figure(d: RunData, at: str = "last") -> Any | None:
    """Perplexity at each multiple of the training window across the evaluations (left) and
    perplexity against the multiple per evaluation (right, the `at` evaluation in black); None
    unless at least two lengths were evaluated."""
    mults = _multiples(d)
    rows = [r for r in d.eval_rows if sum(finite(r.get(k)) for _, k in mults) >= 2]
    if len(mults) < 2 or not rows:
        return None
    plt = _plt()
    from matplotlib import cm, colormaps, colors

    window = _window(d)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.8, 4.4), layout="constrained")
    for m, key in mults:
        xs, ys = series(d.eval_rows, key)
        if xs:
            tokens = f", {m * window:g} tokens" if window else ""
            left.plot(xs, ys, marker="o", markersize=4, label=f"{m:g}x{tokens}")
    log_y(left)
    left.set_xlabel("step")
    left.set_ylabel("validation perplexity (log scale)")
    left.set_title("perplexity at k x the training window, over training")
    left.grid(alpha=0.3)
    attempt_lines(left, d)
    left.legend(fontsize=8, title="length", title_fontsize=8)

    steps = [float(r["step"]) for r in rows]
    norm = colors.Normalize(min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1)
    cmap = colormaps["viridis"]
    chosen = float(rows[-1]["step"]) if at == "last" else _at_step(d, at)  # `last`: the newest evaluation
    all_x: list[float] = []
    for r in rows:
        pts = [(m, float(r[k])) for m, k in mults if finite(r.get(k))]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        all_x += xs
        if chosen is not None and float(r["step"]) == chosen:
            right.plot(xs, ys, color="black", linewidth=2.2, marker="o", zorder=3,
                       label=f"{at} (step {r['step']:g})")
        else:
            right.plot(xs, ys, color=cmap(norm(float(r["step"]))), linewidth=1, marker=".", alpha=0.9)
    right.set_xscale("log", base=2)
    ticks = sorted(set(all_x))
    right.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    right.minorticks_off()
    log_y(right)
    right.set_xlabel("evaluation length (x training window" + (f" = {window} tokens)" if window else ")"))
    right.set_ylabel("validation perplexity (log scale)")
    right.set_title("perplexity vs length, one curve per evaluation")
    right.grid(alpha=0.3)
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=right, label="evaluation step")
    unsupported = sorted({f"{m:g}x" for m, k in mults for r in d.eval_rows
                          if isinstance(r.get(k), str) and r[k].startswith("unsupported")})
    title = f"{d.name} ({d.run_id}): length generalization"
    if unsupported:
        title += f"; not evaluable: {', '.join(unsupported)} (see metrics_history.jsonl)"
    fig.suptitle(title, fontsize=10)
    return fig


def length_generalization(d: RunData, at: str = "last") -> bytes | None:
    """`length_figure` as PNG bytes (None when fewer than two lengths were evaluated)."""
    fig = length_figure(d, at)
    return None if fig is None else png_bytes(fig)


def length_points(d: RunData, at: str) -> tuple[list[float], list[float]]:
    """Perplexity against position multiple (1x is the training window) at best/last/step=N."""
    row = d.at(at)
    pts = [(m, float(row[k])) for m, k in _multiples(d) if finite(row.get(k))]
    return [p[0] for p in pts], [p[1] for p in pts]


# ------------------------------------------------------------------------------ several runs
def compare_figure(items: Sequence[RunData], metrics: Sequence[str], at: str = "last") -> Any:
    """One panel per metric (metric vs step, one line per run, legend = `RunData.label`), plus
    perplexity vs position multiple at `at` for runs that evaluated several lengths."""
    lengths = [(d, length_points(d, at)) for d in items]
    lengths = [(d, xy) for d, xy in lengths if len(xy[0]) >= 2]
    panels = len(metrics) + (1 if lengths else 0)
    per_token = all(_per_token(d) for d in items)
    plotted = 0
    plt = _plt()
    cols = min(panels, 2)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4 * rows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    colours = {d.label: f"C{i % 10}" for i, d in enumerate(items)}
    for ax, metric in zip(flat, metrics):
        for d in items:
            xs, ys = metric_series(d, metric)
            if xs:
                ax.plot(xs, ys, label=d.label, color=colours[d.label], marker="o" if len(xs) < 30 else None,
                        markersize=3)
                plotted += 1
        ax.set_title(f"{metric} vs step")
        ax.set_xlabel("step")
        ax.set_ylabel(axis_label(metric, per_token))
        if "(log scale)" in ax.get_ylabel() and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
            log_y(ax)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if lengths:
        ax = flat[len(metrics)]
        for d, (xs, ys) in lengths:
            ax.plot(xs, ys, marker="o", label=d.label, color=colours[d.label])
            plotted += 1
        ax.set_xscale("log", base=2)
        ticks = sorted({x for _, (xs, _) in lengths for x in xs})
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.minorticks_off()
        log_y(ax)
        ax.set_xlabel("evaluation length (x training window)")
        ax.set_ylabel("validation perplexity (log scale)")
        ax.set_title(f"length generalization ({at})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in flat[panels:]:
        ax.set_visible(False)
    names = list(dict.fromkeys(d.name for d in items))
    fig.suptitle(f"{', '.join(names)}: {len(items)} runs", fontsize=10)
    if not plotted:
        plt.close(fig)
        raise UserError(f"nothing to plot: none of the runs logged {', '.join(metrics)} in eval/metrics_history.jsonl "
                        "or logs/train_diagnostics.jsonl")
    return fig


def compare_png(items: Sequence[RunData], metrics: Sequence[str], at: str = "last") -> bytes:
    """`compare_figure` as PNG bytes."""
    return png_bytes(compare_figure(items, metrics, at))

