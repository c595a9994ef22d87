"""What the figures of `orch plot` and `orch compare --plot` show, read back from matplotlib's axes:
per-step train loss with the evaluations over it, units on the y axes, resume markers, the
length-generalization evolution, and legends named by the parameters that differ."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runfactory import make_run, orch

from orchestrator.analysis.compare import unique_labels
from orchestrator.analysis.plotting import compare_figure, length_figure, training_figure
from orchestrator.analysis.rundata import RunData


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def resumed(tmp_path: Path) -> RunData:
    """A run whose attempt 1 logged steps 0..120 and died; attempt 2 resumed from the step-100
    checkpoint and logged 110..200 again (the framework's `attempt` field in every row)."""
    p = make_run(tmp_path / "results", name="resumed", steps=200)
    diags = [{"step": s, "attempt": 1, "loss": 4.0 - s / 100, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_sec": 1e4}
             for s in range(0, 130, 10)]
    diags += [{"step": s, "attempt": 2, "loss": 3.9 - s / 100, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_sec": 9e3}
              for s in range(110, 210, 10)]
    _jsonl(p.diagnostics, diags)
    hist = [{"step": s, "attempt": 1 if s <= 100 else 2, "train_loss": 3.9 - s / 100, "val_loss": 4.0 - s / 100,
             "val_ppl@1x": 50 - s / 10, "val_ppl@2x": 60 - s / 10, "val_ppl@10x": 90 - s / 20,
             "val_ppl@20x": "unsupported: the validation split has 900 tokens, fewer than 1281",
             "val_ppl": 50 - s / 10} for s in (50, 100, 150, 200)]
    _jsonl(p.metrics_history, hist)
    p.metrics.write_text("{}")
    return RunData(p.root, "run")


def _axis(fig, title: str):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def _line(ax, label: str):
    return next(line for line in ax.get_lines() if line.get_label() == label)


def test_training_figure_per_step_loss_evaluations_units_and_resume_markers(resumed: RunData) -> None:
    fig = training_figure(resumed)
    loss = _axis(fig, "loss")
    train = _line(loss, "train loss (every logged step)")
    logged = list(range(0, 110, 10)) + list(range(110, 210, 10))  # attempt 1's rolled-back 110, 120 dropped
    assert list(train.get_xdata()) == logged and len(train.get_xdata()) == 21
    assert train.get_ydata()[-1] == pytest.approx(3.9 - 2.0)  # attempt 2's values win
    val = _line(loss, "val loss (evaluation)")
    assert list(val.get_xdata()) == [50, 100, 150, 200]
    assert loss.get_ylabel() == "loss (nats/token)"
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert {ax.get_title() for ax in shown} == {"loss", "validation perplexity", "learning rate", "gradient norm",
                                               "throughput"}
    for ax in shown:
        assert ax.get_ylabel() and ax.get_xlabel() == "step"
        [marker] = [line for line in ax.get_lines() if line.get_gid() == "attempt-2"]
        assert list(marker.get_xdata()) == [110, 110]  # where attempt 2 began
    assert "attempt start (resume)" in [t.get_text() for t in loss.get_legend().get_texts()]


def test_length_figure_shows_every_multiple_across_evaluations(resumed: RunData) -> None:
    fig = length_figure(resumed, "last")
    left = _axis(fig, "perplexity at k x the training window, over training")
    labels = [line.get_label() for line in left.get_lines() if not line.get_gid()]
    assert labels == ["1x, 64 tokens", "2x, 128 tokens", "10x, 640 tokens"]  # 20x: unsupported, not drawn
    assert all(len(line.get_xdata()) == 4 for line in left.get_lines() if not line.get_gid())
    assert left.get_yscale() == "log" and "perplexity" in left.get_ylabel()
    right = _axis(fig, "perplexity vs length, one curve per evaluation")
    curves = right.get_lines()
    assert len(curves) == 4 and all(list(c.get_xdata()) == [1, 2, 10] for c in curves)
    [last] = [c for c in curves if c.get_label() == "last (step 200)"]
    assert list(last.get_ydata()) == [30, 40, 80]
    assert any(ax.get_ylabel() == "evaluation step" for ax in fig.axes)  # the colour bar
    assert "not evaluable: 20x" in fig._suptitle.get_text()
    best = _axis(length_figure(resumed, "step=120"), "perplexity vs length, one curve per evaluation")
    assert [c.get_label() for c in best.get_lines() if not c.get_label().startswith("_")] == ["step=120 (step 100)"]
    assert length_figure(RunData(make_run(resumed.root.parent.parent, name="flat", lengths=False).root, "run")) is None


def test_compare_legends_name_what_differs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    sweep = [RunData(make_run(results, name="lrsweep", seed=i, lr=lr, sweep_point={"train.lr": lr}).root, "run")
             for i, lr in enumerate((1e-3, 3e-3))]
    plain = [RunData(make_run(results, name="width", seed=i, d_model=d).root, "run") for i, d in enumerate((64, 128))]
    twins = [RunData(make_run(results, name="twin", run_id=f"twin-20250314-10150{i}-0000").root, "run") for i in range(2)]
    for group, expected in ((sweep, ["lr=0.001", "lr=0.003"]),  # the sweep point, though the seeds differ too
                            (plain, ["seed=1337, d_model=64", "seed=1338, d_model=128"]),  # the spec values that differ
                            (twins, ["twin [20250314-101500-0000]", "twin [20250314-101501-0000]"])):  # nothing differs
        unique_labels(group)
        assert [d.label for d in group] == expected
    fig = compare_figure(sweep, ["val_loss", "loss"], "last")
    for title in ("val_loss vs step", "loss vs step"):
        ax = _axis(fig, title)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lr=0.001", "lr=0.003"]
    assert _axis(fig, "loss vs step").get_ylabel() == "loss (nats/token)"
    assert len(_axis(fig, "loss vs step").get_lines()[0].get_xdata()) == 21  # the per-step diagnostics
    both = sweep[:1] + plain[:1]
    unique_labels(both)
    assert [d.label for d in both] == ["lrsweep", "width"]


def test_orch_plot_writes_curves_and_length_figure(resumed: RunData, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    out = tmp_path / "figs" / "run.png"
    res = orch("plot", resumed.run_id, "--out", str(out), results=tmp_path / "results", cwd=tmp_path, check=True)
    side = out.with_name("run_length_generalization.png")
    assert f"wrote {out}" in res.stdout and f"wrote {side}" in res.stdout
    for png in (out, side):
        img = mpimg.imread(png)
        assert img.shape[0] >= 400 and img.shape[1] >= 1000 and img[..., :3].std() > 0.05


def test_bundle_readme_embeds_the_length_figure(resumed: RunData) -> None:
    from orchestrator.preserve.readme import render_readme

    plots = ["plots/training_curves.png", "plots/length_generalization.png"]
    text = render_readme(resumed, checkpoints="none", roles={}, plots=plots, files={}, skipped=[])
    section = text.split("### Length generalization")[1].split("\n## ")[0]
    assert "](plots/length_generalization.png)" in section
    assert text.count("plots/length_generalization.png") == 1 and "![plots/training_curves.png]" in text
