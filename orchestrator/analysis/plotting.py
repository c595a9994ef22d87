"""Training-curve and comparison plots as PNG bytes (matplotlib, Agg backend, no display).

Used by `orch plot`, `orch compare --plot` and the bundle README. Figures are rendered to bytes
and written atomically by the caller; PNG metadata carries no version or date, so the same run
gives the same bytes and re-preserving it stays a no-op.
"""
from __future__ import annotations

import io
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


def _train_loss(d: RunData) -> tuple[list[float], list[float]]:
    xs, ys = series(d.history, "train_loss")
    return (xs, ys) if xs else series(d.diagnostics, "loss")


def training_curves(d: RunData) -> bytes | None:
    """Loss, perplexity, learning rate and grad norm against step; None when nothing was logged."""
    panels: list[tuple[str, list[tuple[str, tuple[list[float], list[float]]]], bool]] = [
        ("loss", [("train", _train_loss(d)), ("val", series(d.history, "val_loss"))], False),
        ("validation perplexity", [("val_ppl", series(d.history, "val_ppl"))], True),
        ("learning rate", [("lr", series(d.diagnostics, "lr"))], False),
        ("grad norm", [("grad_norm", series(d.diagnostics, "grad_norm"))], True),
    ]
    panels = [p for p in panels if any(xy[0] for _, xy in p[1])]
    if not panels:
        return None
    plt = _plt()
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    for ax, (title, lines, logy) in zip(axes.flat, panels):
        for label, (xs, ys) in lines:
            if xs:
                ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        if logy and all(v > 0 for _, (xs, ys) in lines for v in ys):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{d.name} ({d.run_id})", fontsize=10)
    return png_bytes(fig)


def length_points(d: RunData, at: str) -> tuple[list[float], list[float]]:
    """Perplexity against position multiple (1x is the training window) at best/last/step=N."""
    row = d.at(at)
    xs, ys = [], []
    if finite(row.get("val_ppl")):
        xs.append(1.0)
        ys.append(float(row["val_ppl"]))
    for mult, key in d.length_keys():
        if finite(row.get(key)) and mult != 1.0:
            xs.append(mult)
            ys.append(float(row[key]))
    return xs, ys


def length_generalization(d: RunData, at: str = "last") -> bytes | None:
    xs, ys = length_points(d, at)
    if len(xs) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    ax.plot(xs, ys, marker="o")
    _length_axes(ax, xs)
    ax.set_title(f"{d.name}: perplexity vs position ({at})")
    return png_bytes(fig)


def _length_axes(ax: Any, xs: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(xs))
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (x training window)")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)


def compare_figure(items: Sequence[RunData], metrics: Sequence[str], at: str = "last") -> bytes:
    """One panel per metric (metric vs step, one line per run), plus perplexity vs position."""
    lengths = [(d, length_points(d, at)) for d in items]
    lengths = [(d, xy) for d, xy in lengths if len(xy[0]) >= 2]
    panels = len(metrics) + (1 if lengths else 0)
    plotted = 0
    plt = _plt()
    cols = min(panels, 2)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4 * rows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax, metric in zip(flat, metrics):
        for d in items:
            xs, ys = series(d.history, metric)
            if not xs and metric in ("train_loss", "loss"):
                xs, ys = _train_loss(d)
            if xs:
                ax.plot(xs, ys, label=d.label, marker="o" if len(xs) < 30 else None, markersize=3)
                plotted += 1
        ax.set_title(f"{metric} vs step")
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        if "ppl" in metric and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if lengths:
        ax = flat[len(metrics)]
        for d, (xs, ys) in lengths:
            ax.plot(xs, ys, marker="o", label=d.label)
            plotted += 1
        _length_axes(ax, [x for _, (xs, _) in lengths for x in xs])
        ax.set_title(f"length generalization ({at})")
        ax.legend(fontsize=8)
    for ax in flat[panels:]:
        ax.set_visible(False)
    if not plotted:
        plt.close(fig)
        raise UserError(f"nothing to plot: none of the runs logged {', '.join(metrics)} in eval/metrics_history.jsonl")
    return png_bytes(fig)
