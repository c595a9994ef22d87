"""`orch compare`, `orch plot` and `orchestrator.load` on a fabricated 3-point sweep."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from runfactory import make_run, orch


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    for i, lr in enumerate((1e-3, 3e-3, 1e-2)):
        make_run(results, name="lrsweep", seed=i + 1, lr=lr, sweep_point={"train.lr": lr}, ckpt_bytes=1024)
    return results


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.stat().st_size > 10_000
    img = mpimg.imread(path)
    assert img.shape[0] >= 300 and img.shape[1] >= 400
    rgb = img[..., :3]
    assert rgb.std() > 0.05
    assert (rgb.max(axis=2) - rgb.min(axis=2) > 0.2).mean() > 0.002  # coloured run lines, not just grey axes


def test_compare_sweep_table_and_plot(sweep: Path, tmp_path: Path) -> None:
    png = tmp_path / "out" / "cmp.png"
    res = orch("compare", "lrsweep", "--plot", str(png), results=sweep, cwd=tmp_path, check=True)
    out = res.stdout
    assert "spec differences:" in out and "train.lr" in out
    assert "model.d_model" not in out  # equal everywhere: not shown
    for label in ("lr=0.001", "lr=0.003", "lr=0.01"):
        assert label in out
    assert "val_ppl@2x" in out and "val_loss" in out
    _png_ok(png)


def test_compare_json_csv_at_step(sweep: Path, tmp_path: Path) -> None:
    data = json.loads(orch("compare", "lrsweep", "--json", "--at", "step=100", "--metrics", "val_loss",
                           results=sweep, cwd=tmp_path, check=True).stdout)
    assert data["at"] == "step=100" and len(data["runs"]) == 3
    assert set(data["spec_differences"]) >= {"train.lr"}
    assert all(v == 100 for v in data["metrics"]["step"].values())
    losses = list(data["metrics"]["val_loss"].values())
    assert len(set(losses)) == 3
    rows = list(csv.reader(io.StringIO(orch("compare", "lrsweep", "--csv", results=sweep, cwd=tmp_path,
                                            check=True).stdout)))
    assert rows[0][:2] == ["key", "section"] and len(rows[0]) == 5
    assert any(r[0] == "train.lr" and r[1] == "spec" for r in rows)


def test_runs_and_bundles_interchangeable(sweep: Path, tmp_path: Path) -> None:
    dest = tmp_path / "preserved"
    orch("preserve", "lrsweep", "--dest", str(dest), "--checkpoints", "none", results=sweep, cwd=tmp_path, check=True)
    bundles = sorted(p for p in dest.iterdir() if not p.name.startswith("."))
    assert len(bundles) == 3
    run_ids = sorted(p.name for p in (sweep / "lrsweep").iterdir())
    res = orch("compare", str(bundles[0]), run_ids[1], "--json", results=sweep, cwd=tmp_path, check=True)
    data = json.loads(res.stdout)
    assert [r["kind"] for r in data["runs"]] == ["bundle", "run"]
    png = tmp_path / "plot.png"
    orch("plot", str(bundles[1]), "--out", str(png), results=sweep, cwd=tmp_path, check=True)
    _png_ok(png)


def test_compare_errors(sweep: Path, tmp_path: Path) -> None:
    for args in (("compare", "lrsweep", "--metrics", "bogus"), ("compare", "lrsweep", "--at", "sometime"),
                 ("compare", "lrsweep", "--at", "step=x"), ("compare", "nope"),
                 ("compare", "lrsweep", "--plot", str(tmp_path / "x.jpg")), ("compare", "lrsweep", "--json", "--csv")):
        res = orch(*args, results=sweep, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_plot_default_out(sweep: Path, tmp_path: Path) -> None:
    rid = sorted(p.name for p in (sweep / "lrsweep").iterdir())[0]
    orch("plot", rid, results=sweep, cwd=tmp_path, check=True)
    _png_ok(tmp_path / f"{rid}_curves.png")


def test_notebook_load(sweep: Path, tmp_path: Path) -> None:
    import orchestrator

    data = orchestrator.load(sweep)
    assert len(data.runs) == 3 and {"run_id", "state", "final.val_loss", "sweep.train.lr"} <= set(data.runs.columns)
    assert len(data.history) == 3 * 5 and "val_ppl@2x" in data.history.columns
    assert len(data.diagnostics) == 3 * 21 and "grad_norm" in data.diagnostics.columns
    merged = data.history.merge(data.runs[["run_id", "sweep.train.lr"]], on="run_id")
    assert merged.groupby("sweep.train.lr")["val_loss"].min().is_monotonic_increasing
    dest = tmp_path / "preserved"
    orch("preserve", "lrsweep", "--dest", str(dest), "--checkpoints", "none", results=sweep, cwd=tmp_path, check=True)
    assert len(orchestrator.load(dest).runs) == 3
    one = next(p for p in dest.iterdir() if not p.name.startswith("."))
    assert orchestrator.load(one).runs.loc[0, "kind"] == "bundle"


def test_compare_and_check_see_the_same_names(tmp_path: Path) -> None:
    """Nested history records and train diagnostics: `orch check` and `orch compare` name and
    resolve them alike (`latent.first_token_acc`, `tokens_per_sec`), and `--at best` follows the
    metric's direction (f1: higher is better) where the spec states no mode."""
    import yaml

    results = tmp_path / "results"
    p = make_run(results, name="nested", ckpt_bytes=1024)
    spec = yaml.safe_load(p.spec.read_text())
    spec["checkpoint"] = {"every": 100, "metric": "f1"}  # no mode: the direction table decides
    spec.pop("env")  # the fabricated secret would (rightly) make the spec invalid
    spec["checks"] = ["latent.first_token_acc > 0.5", "tokens_per_sec > 1000", "best.f1 > 0.6"]
    p.spec.write_text(yaml.safe_dump(spec, sort_keys=False))
    p.metrics.write_text(json.dumps({"n_params": 7_300_000}))  # no final/best sections: from the logs
    rows = [{"step": 50, "val_loss": 2.0, "f1": 0.4, "latent": {"first_token_acc": 0.2}},
            {"step": 100, "val_loss": 1.8, "f1": 0.7, "latent": {"first_token_acc": 0.6}},
            {"step": 150, "val_loss": 1.7, "f1": 0.5, "latent": {"first_token_acc": 0.55}}]
    p.metrics_history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    verdict = json.loads(orch("check", "nested", "--json", results=results, cwd=tmp_path).stdout)
    measured = {k: v for r in verdict["results"] if r["kind"] == "spec" for k, v in r["measured"].items()}
    assert [r["status"] for r in verdict["results"] if r["kind"] == "spec"] == ["pass", "pass", "pass"]
    last = json.loads(orch("compare", "nested", "--json", "--at", "last", "--metrics",
                           "latent.first_token_acc,tokens_per_sec", results=results, cwd=tmp_path, check=True).stdout)
    for name in ("latent.first_token_acc", "tokens_per_sec"):
        [value] = last["metrics"][name].values()
        assert value == measured[name], name
    best = json.loads(orch("compare", "nested", "--json", "--at", "best", "--metrics", "f1,latent.first_token_acc",
                           results=results, cwd=tmp_path, check=True).stdout)
    assert list(best["metrics"]["step"].values()) == [100] and list(best["metrics"]["f1"].values()) == [0.7]
    assert measured["best.f1"] == 0.7


def test_compare_at_step_names_the_step_shown_and_fits_the_terminal(sweep: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--at step=120` (evaluations every 50 steps) says it shows step 100; long spec checks and
    the checks.json verdicts become short cells; every line fits COLUMNS=120."""
    import yaml

    runs = sorted((sweep / "lrsweep").iterdir())
    spec = yaml.safe_load((runs[0] / "spec.yaml").read_text())
    spec["checks"] = [{"expr": f"best.val_loss < {x}", "message": "a long explanation of why " * 6} for x in (2, 3, 4)]
    (runs[0] / "spec.yaml").write_text(yaml.safe_dump(spec))
    (runs[2] / "checks.json").write_text(json.dumps({"passed": False, "summary": "1/2 pass FAILED",
                                                     "failing": ["best.val_loss < 1.0"], "results": []}))
    monkeypatch.setenv("COLUMNS", "120")
    res = orch("compare", "lrsweep", "--at", "step=120", "--metrics", "val_loss,loss", results=sweep, cwd=tmp_path,
               check=True)
    lines = res.stdout.splitlines()
    assert max(map(len, lines)) <= 120, max(lines, key=len)
    text = " ".join(res.stdout.split())
    assert "nearest recorded step 100 (asked 120" in text and "not interpolated" in text
    checks_row = next(line for line in lines if line.startswith("checks "))
    assert checks_row.split()[1:] == ["3", "checks", "-", "-"]  # spec difference: counted, not dumped
    verdicts = lines[max(i for i, line in enumerate(lines) if line.startswith("checks "))]
    assert "1/1 pass" in verdicts and "1/2 pass FAILED: best.val_loss < 1.0" in verdicts


def test_compare_over_train_diagnostics(sweep: Path, tmp_path: Path) -> None:
    """Diagnostics metrics (`loss`, `grad_norm`: logs/train_diagnostics.jsonl) compare like
    evaluation metrics: at step=N from the newest train record at or before the evaluation shown."""
    import math

    data = json.loads(orch("compare", "lrsweep", "--json", "--at", "step=120", "--metrics", "loss,grad_norm",
                           results=sweep, cwd=tmp_path, check=True).stdout)
    assert data["notes"] == ["nearest recorded step 100 (asked 120: the newest record at or before it, not interpolated)"]
    for run in data["runs"]:
        lr = float(run["label"].split("=")[1])
        scale = 1.0 + 10 * lr + 0.1
        assert data["metrics"]["loss"][run["label"]] == pytest.approx(3.0 * math.exp(-100 / (200 * scale)) + 1.0)
        assert data["metrics"]["grad_norm"][run["label"]] == pytest.approx(1.0 + 0.5 * math.sin(100))
