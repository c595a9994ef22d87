"""`orch report` and `orch export` end to end: the CLI as a subprocess on a results tree holding a
real requeued run (a local job sent the preemption warning signal mid-training: it checkpoints,
is requeued and resumes in a second attempt; with `train.trackers: [tensorboard]`), a fabricated sweep, and a
fabricated run whose second attempt resumed from an earlier checkpoint (overlapping steps) and
whose sample, prediction and log hold markup. The site is opened in headless Chromium; exports are
read back with TensorBoard's EventAccumulator and MLflow's client.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from runfactory import REPO, make_run
from tests.conftest import wait_until

SCRIPT = "<script>window.PWNED=1</script>"
IMG = '<img src=x onerror="window.PWNED=2">'
ARTIFACTS = Path(os.environ.get("ORCH_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))

REQUEUED = """\
name: requeued
model: {arch: gpt2, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 32}
data: {builtin: arith}
train: {max_steps: 600, batch_size: 8, lr: 3.0e-3, warmup_steps: 2, log_every: 5, trackers: [tensorboard]}
eval: {every: 40, batches: 2, prompts: ["12+34="], max_new_tokens: 8, temperature: 0}
checkpoint: {every: 100000}
resources: {signal: USR1}
retry: {max_attempts: 3, on: [preempted], backoff: 0}
"""


def orch(*args: str, results: Path, check: bool = False, timeout: float = 300,
         env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None) -> subprocess.CompletedProcess[str]:
    """The real CLI as a subprocess (`env` adds to the environment; PYTHONPATH in it goes first)."""
    extra = dict(env or {})
    path = os.pathsep.join(p for p in (extra.pop("PYTHONPATH", ""), str(REPO)) if p)
    full = {**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", **extra}
    res = subprocess.run([sys.executable, "-m", "orchestrator", "--results", str(results), *args], capture_output=True,
                         text=True, cwd=cwd or REPO, env=full, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"orch {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fabricate_rollback(results: Path) -> Path:
    """A run whose attempt 2 resumed from step 100 after attempt 1 had logged up to 140: steps
    110..140 appear twice in the files, and the later rows are the true ones."""
    p = make_run(results, "rolled", run_id="rolled-20250314-101500-beef", state="FAILED", lengths=False)
    diag, hist = [], []
    for att, steps in ((1, range(10, 150, 10)), (2, range(110, 210, 10))):
        for s in steps:
            diag.append({"time": 1.7e9 + s + att * 1000, "step": s, "attempt": att, "loss": 3.0 - s / 100 + att * 0.01,
                         "lr": 1e-3, "grad_norm": 1.0 + att, "tokens_per_sec": 1000.0 * att})
            if s % 50 == 0:
                hist.append({"time": 1.7e9 + s + att * 1000, "step": s, "attempt": att, "val_loss": 3.1 - s / 100 + att * 0.01})
    p.diagnostics.write_text("".join(json.dumps(r) + "\n" for r in diag) + '{"step": 999, "loss"')  # torn tail
    p.metrics_history.write_text("".join(json.dumps(r) + "\n" for r in hist))
    p.metrics.unlink()
    p.samples.write_text(json.dumps({"prompt": SCRIPT, "completion": IMG}) + "\n")
    p.predictions.write_text(json.dumps({"prompt": "</script><script>window.PWNED=3</script>", "prediction": "x"}) + "\n")
    p.stderr(2).write_text(f"Traceback: {SCRIPT}\nRuntimeError: CUDA out of memory. hf_{'a' * 30}\n")
    rec = json.loads(p.run_json.read_text())
    rec["failure"] = {"class": "oom", "summary": "CUDA out of memory", "attempt": 2, "diagnosed_at": "2025-03-14T10:20:00+00:00",
                      "evidence": [f"RuntimeError: CUDA out of memory {SCRIPT}"]}
    p.run_json.write_text(json.dumps(rec))
    return p


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("report")
    results = base / "results"
    results.mkdir()
    spec = base / "requeued.yaml"
    spec.write_text(REQUEUED)
    git = ["git", "-C", str(base), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for cmd in (["init", "-q"], ["add", "requeued.yaml"], ["commit", "-qm", "spec"]):  # provenance records the commit
        subprocess.run(git + cmd, check=True, capture_output=True)
    res = orch("submit", str(spec), "--json", results=results, check=True)
    [row] = json.loads(res.stdout)
    run_id, run_dir = row["run_id"], Path(row["run_dir"])
    diag = run_dir / "logs" / "train_diagnostics.jsonl"
    wait_until(lambda: diag.exists() and len(_rows(diag)) >= 5, 300, "training to start", run_dir=run_dir)
    os.kill(int(row["job_id"].split("@")[0]), signal.SIGUSR1)  # a preemption warning: checkpoint, requeue, resume
    for i, lr in enumerate((1e-3, 3e-3, 1e-2)):
        for d in (32, 64):
            make_run(results, "lrsweep", run_id=f"lrsweep-20250314-1015{i}{d}-00{i}{d}", seed=i * 100 + d, lr=lr,
                     d_model=d, sweep_point={"train.lr": lr, "model.d_model": d}, ckpt_bytes=1024)
    rolled = fabricate_rollback(results)
    wait_until(lambda: json.loads((run_dir / "run.json").read_text())["state"] in ("COMPLETED", "FAILED", "CANCELLED"),
               400, "the requeued run to end", run_dir=run_dir)
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["state"] == "COMPLETED" and len(rec["attempts"]) >= 2, rec
    return {"base": base, "results": results, "run_id": run_id, "run_dir": run_dir, "rolled": rolled.root}


# ------------------------------------------------------------------------------ the site
def test_report_writes_a_self_contained_escaped_site_without_secrets(tree: dict[str, Any]) -> None:
    site = tree["base"] / "site"
    res = orch("report", "--out", str(site), results=tree["results"], check=True)
    assert "wrote 8 runs (0 pages unchanged)" in res.stdout and site.joinpath("index.html").as_uri() in res.stdout
    pages = list(site.rglob("*.html"))
    assert len(pages) == 1 + 8 + 3  # index, runs, experiments
    for f in ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE-uPlot.txt", "report.js", "report.css"):
        assert (site / "static" / f).is_file()
    for page in pages:
        text = page.read_text()
        assert "abc123-secret-value" not in text and "hf_" + "a" * 30 not in text and "hf_xxxx" not in text
        assert "<script>window" not in text and "</script><script>" not in text and "<img" not in text
        assert 'src="http' not in text and 'href="http' not in text and "default-src 'none'" in text  # fetches nothing
        assert text.count("<script") == text.count("</script>")
    run_page = next(site.glob("runs/rolled/*.html")).read_text()
    assert "\\u003cscript\\u003ewindow.PWNED=1" in run_page  # present, as JSON escapes
    data = json.loads(run_page.split('id="orch-data">', 1)[1].split("</script>", 1)[0])
    assert data["row"]["state"] == "FAILED" and data["failure"]["class"] == "oom"
    assert data["lines"] == {"train": 24, "eval": 4}  # the torn last line is not counted
    assert not list(site.parent.glob(".site.tmp-*")) and not list(site.parent.glob(".site.old-*"))


def test_rebuild_reuses_unchanged_pages_and_never_replaces_other_folders(tree: dict[str, Any]) -> None:
    site = tree["base"] / "site2"
    orch("report", "--out", str(site), results=tree["results"], check=True)
    before = (site / "runs" / "lrsweep").stat().st_ino
    res = orch("report", "--out", str(site), results=tree["results"], check=True)
    assert "(8 pages unchanged)" in res.stdout
    assert (site / "runs" / "lrsweep").stat().st_ino != before  # a new folder was renamed into place
    with open(tree["rolled"] / "eval" / "metrics_history.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 250, "attempt": 2, "val_loss": 0.5}) + "\n")
    res = orch("report", "--out", str(site), "--no-poll", results=tree["results"], check=True)
    assert "(7 pages unchanged)" in res.stdout
    foreign = tree["base"] / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    res = orch("report", "--out", str(foreign), results=tree["results"])
    assert res.returncode == 2 and "is not an orch report" in res.stderr and (foreign / "thesis.tex").exists()
    res = orch("report", "--out", str(tree["results"].parent), results=tree["results"])
    assert res.returncode == 2 and "would replace the results root" in res.stderr
    res = orch("report", "--out", str(tree["results"] / "site"), results=tree["results"])
    assert res.returncode == 2 and "inside the results tree" in res.stderr


def test_monitor_refreshes_the_report_from_the_profile_or_the_flag(tree: dict[str, Any]) -> None:
    profile = tree["base"] / "cluster.yaml"
    site = tree["base"] / "monitored"
    profile.write_text(f"report_dir: {site}\n")
    orch("monitor", "--once", "--quiet", results=tree["results"], check=True, env={"ORCH_CLUSTER": str(profile)})
    index = site / "index.html"
    assert index.is_file() and len(json.loads(index.read_text().split('id="orch-data">', 1)[1].split("</script>")[0])["runs"]) == 8
    flag = tree["base"] / "flagged"
    orch("monitor", "--once", "--quiet", "--report", str(flag), results=tree["results"], check=True)
    assert (flag / "index.html").is_file()


# ------------------------------------------------------------------------------ in a browser
@pytest.fixture(scope="module")
def browser() -> Any:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not chromium or not driver_bin:
        reason = "headless Chromium is not installed (make browser-deps: apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI"):
            pytest.fail(reason + " -- CI must run the browser tests")
        pytest.skip(reason)
    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(driver: Any, url: str) -> list[dict[str, Any]]:
    driver.get(url)
    wait_until(lambda: driver.execute_script("return document.readyState") == "complete", 30, "the page to load")
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def _shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, max(1000, min(height + 40, 8000)))
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    print(f"screenshot: {path}")
    return path


COLOURED_PIXELS = """
return Array.from(document.querySelectorAll('.chart')).map(box => {
  const c = box.querySelector('canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;  // pixels of a series colour (axes and grid are grey)
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) n++;
  }
  return [box.getAttribute('data-title'), n];
});"""


def _visible(driver: Any) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('#runs .row')).map(r => r.dataset.id)")


def test_index_sorts_filters_and_searches_in_chromium(tree: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    site = tree["base"] / "site-browser"
    orch("report", "--out", str(site), results=tree["results"], check=True)
    errors = _open(browser, (site / "index.html").as_uri())
    assert errors == []
    runs = {r["id"]: r for r in json.loads((site / "index.html").read_text().split('id="orch-data">', 1)[1]
                                           .split("</script>")[0])["runs"]}
    assert sorted(_visible(browser)) == sorted(runs)
    browser.find_element(By.CSS_SELECTOR, '#runs .head div[data-key="val_loss"]').click()
    order = [runs[i]["val_loss"] for i in _visible(browser)]
    known = [v for v in order if v is not None]
    assert known == sorted(known) and order[: len(known)] == known  # ascending, missing values last
    browser.find_element(By.CSS_SELECTOR, '#runs .head div[data-key="val_loss"]').click()
    known = [runs[i]["val_loss"] for i in _visible(browser) if runs[i]["val_loss"] is not None]
    assert known == sorted(known, reverse=True)
    browser.find_element(By.CSS_SELECTOR, '.chip[data-state="FAILED"]').click()
    assert sorted(_visible(browser)) == sorted(i for i, r in runs.items() if r["state"] == "FAILED")
    browser.find_element(By.CSS_SELECTOR, '.chip[data-state="FAILED"]').click()
    box = browser.find_element(By.CSS_SELECTOR, 'input[type="search"]')
    box.send_keys("lr=0.003")
    assert sorted(_visible(browser)) == sorted(i for i, r in runs.items() if r["params"].get("train.lr") == 0.003)
    assert len(_visible(browser)) == 2
    _shot(browser, "report-index-filtered")
    box.clear()
    box.send_keys("requeued")
    assert _visible(browser) == [tree["run_id"]]
    box.clear()
    box.send_keys(" ")
    assert len(_visible(browser)) == 8
    _shot(browser, "report-index")
    assert browser.execute_script("return window.PWNED") is None


def test_run_pages_draw_curves_and_keep_markup_inert_in_chromium(tree: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    site = tree["base"] / "site-browser"
    page = site / "runs" / "requeued" / f"{tree['run_id']}.html"
    assert _open(browser, page.as_uri()) == []
    charts = dict(browser.execute_script(COLOURED_PIXELS))
    for title in ("Loss", "Learning rate", "Gradient norm", "Throughput (tokens/s)", "Validation perplexity"):
        assert charts.get(title, 0) > 200, (title, charts)  # a drawn line, not an empty frame
    boundaries = browser.execute_script("return document.querySelector('#curves + div').textContent")
    assert "requeued attempt" in boundaries
    attempts = browser.find_elements(By.CSS_SELECTOR, "svg.timeline rect")
    assert len(attempts) >= 2
    assert "preempted" in browser.find_element(By.TAG_NAME, "body").text  # attempt 1's cause
    _shot(browser, "report-run-requeued")

    rolled = next(site.glob("runs/rolled/*.html"))
    assert _open(browser, rolled.as_uri()) == []
    assert browser.execute_script("return window.PWNED") is None
    body = browser.find_element(By.TAG_NAME, "body").text
    assert SCRIPT in body and IMG in body and "</script><script>window.PWNED=3</script>" in body
    assert "hf_" + "a" * 30 not in body and "RuntimeError: CUDA out of memory" in body
    assert browser.execute_script("return document.querySelectorAll('img, iframe, object').length") == 0
    assert dict(browser.execute_script(COLOURED_PIXELS)).get("Loss", 0) > 200
    _shot(browser, "report-run-rolled-back")

    assert _open(browser, (site / "groups" / "lrsweep.html").as_uri()) == []
    charts = dict(browser.execute_script(COLOURED_PIXELS))
    assert charts.get("best val_loss vs train.lr", 0) > 100 and charts.get("best val_loss vs model.d_model", 0) > 100, charts
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Chinchilla" in text and "7,300,000" in text
    _shot(browser, "report-sweep")


# ------------------------------------------------------------------------------ exports
def _logical(path: Path) -> dict[str, dict[int, float]]:
    """What a run logged, as one logical run: {key: {step: value}} (later attempts win, rolled-back rows dropped)."""
    from orchestrator.report.collect import logical_rows, metric_name, read_rows, series

    rows, _ = logical_rows(read_rows(path))  # the files' own readers skip a torn or corrupt line
    return {metric_name(k): {s: v for s, v, _ in pts} for k, pts in series(rows).items()}


def _expected(run_dir: Path) -> dict[str, dict[int, float]]:
    out = {f"train/{k}": v for k, v in _logical(run_dir / "logs" / "train_diagnostics.jsonl").items()}
    out.update({f"eval/{k}": v for k, v in _logical(run_dir / "eval" / "metrics_history.jsonl").items()})
    return out


def _same(got: dict[str, list[tuple[int, float]]], want: dict[str, dict[int, float]]) -> None:
    """Every logged scalar at its step, each step once, in order (values as float32 or better)."""
    assert set(got) == set(want)
    for tag, points in want.items():
        steps = [s for s, _ in got[tag]]
        assert steps == sorted(points) and len(set(steps)) == len(steps), tag
        for step, value in got[tag]:
            assert math.isclose(value, points[step], rel_tol=1e-6, abs_tol=1e-6), (tag, step, value, points[step])


def _tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_export_is_one_logical_run_and_incremental(tree: dict[str, Any]) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    tb = tree["base"] / "tb"
    res = orch("export", tree["run_id"], "rolled", "--to", "tensorboard", str(tb), results=tree["results"], check=True)
    assert "(rewritten)" in res.stdout
    for run_dir in (tree["run_dir"], tree["rolled"]):
        folder = tb / run_dir.parent.name / run_dir.name
        got = _tb_scalars(folder)
        assert "train/loss" in got and "eval/val_loss" in got
        _same(got, _expected(run_dir))
        acc = EventAccumulator(str(folder))
        acc.Reload()
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        assert start.hparams["train.lr"].number_value > 0 and start.hparams["name"].string_value == run_dir.parent.name
        assert start.hparams["env.WANDB_API_KEY"].string_value != "abc123-secret-value"
        assert metadata.SESSION_END_INFO_TAG in content
    real = _tb_scalars(tb / "requeued" / tree["run_id"])
    attempts = {r["attempt"] for r in _rows(tree["run_dir"] / "logs" / "train_diagnostics.jsonl")}
    assert attempts >= {1, 2} and len(real["train/loss"]) == len(_rows(tree["run_dir"] / "logs" / "train_diagnostics.jsonl"))
    rolled = dict(_tb_scalars(tb / "rolled" / tree["rolled"].name)["train/grad_norm"])
    assert rolled[100] == 2.0 and rolled[110] == 3.0  # attempt 1 up to its checkpoint, attempt 2 after it

    files = sorted(p.name for p in (tb / "rolled" / tree["rolled"].name).glob("events.*"))
    res = orch("export", "rolled", "--to", "tensorboard", str(tb), results=tree["results"], check=True)
    assert "0 points (up to date)" in res.stdout
    assert sorted(p.name for p in (tb / "rolled" / tree["rolled"].name).glob("events.*")) == files
    with open(tree["rolled"] / "logs" / "train_diagnostics.jsonl", "a") as fh:  # the run goes on
        fh.write("\n" + "".join(json.dumps({"step": s, "attempt": 2, "loss": 1.0, "lr": 1e-3}) + "\n" for s in (210, 220)))
    res = orch("export", "rolled", "--to", "tensorboard", str(tb), results=tree["results"], check=True)
    assert "4 points (appended)" in res.stdout
    got = _tb_scalars(tb / "rolled" / tree["rolled"].name)
    assert [s for s, _ in got["train/loss"]][-3:] == [200, 210, 220]
    _same(got, _expected(tree["rolled"]))
    with open(tree["rolled"] / "logs" / "train_diagnostics.jsonl", "a") as fh:  # a third attempt resumed at 200
        fh.write(json.dumps({"step": 210, "attempt": 3, "loss": 0.5, "lr": 1e-3}) + "\n")
    res = orch("export", "rolled", "--to", "tensorboard", str(tb), results=tree["results"], check=True)
    assert "(rewritten)" in res.stdout
    got = _tb_scalars(tb / "rolled" / tree["rolled"].name)
    assert got["train/loss"][-2:] == [(200, pytest.approx(1.02)), (210, 0.5)]  # 220 was rolled back


def test_mlflow_export_has_params_histories_artifacts_and_adds_nothing_twice(tree: dict[str, Any]) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tree['base'] / 'mlflow.db'}"
    # MLflow puts a sqlite store's artifacts in ./mlruns: run where that may go
    res = orch("export", tree["run_id"], "--to", "mlflow", uri, results=tree["results"], check=True, cwd=tree["base"])
    assert "(new)" in res.stdout
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("requeued")
    [run] = client.search_runs([exp.experiment_id])
    mid = run.info.run_id
    assert run.data.params["train.lr"] == "0.003" and run.data.params["train.trackers"] == '["tensorboard"]'
    assert "abc123-secret-value" not in json.dumps(run.data.params)
    tags = run.data.tags
    prov = json.loads((tree["run_dir"] / "provenance.json").read_text())
    assert tags["orch.state"] == "COMPLETED" and int(tags["orch.attempts"]) >= 2
    assert tags["mlflow.source.git.commit"] == prov["git"]["commit"] and tags["mlflow.runName"] == tree["run_id"]
    assert run.info.status == "FINISHED"
    want = _expected(tree["run_dir"])
    _same({k: sorted((m.step, m.value) for m in client.get_metric_history(mid, k)) for k in want}, want)
    arts = {a.path for a in client.list_artifacts(mid, "orch")}
    assert {"orch/metrics.json", "orch/curves.png"} <= arts
    local = client.download_artifacts(mid, "orch/metrics.json", str(tree["base"] / "dl"))
    assert json.loads(Path(local).read_text())["steps"] == json.loads((tree["run_dir"] / "eval" / "metrics.json").read_text())["steps"]

    counts = {k: len(client.get_metric_history(mid, k)) for k in want}
    res = orch("export", tree["run_id"], "--to", "mlflow", uri, results=tree["results"], check=True, cwd=tree["base"])
    assert "0 params, 0 metric points, artifacts: unchanged" in res.stdout
    assert {k: len(client.get_metric_history(mid, k)) for k in want} == counts
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_live_trackers_wrote_tensorboard_events_during_training(tree: dict[str, Any]) -> None:
    pytest.importorskip("tensorboard")
    folder = tree["run_dir"] / "tracking" / "requeued"
    got = _tb_scalars(folder)
    steps = {s for s, _ in got["train/loss"]}
    assert steps == {r["step"] for r in _rows(tree["run_dir"] / "logs" / "train_diagnostics.jsonl")}
    assert "eval/val_loss" in got


def test_a_missing_extra_is_a_usage_error_naming_it(tree: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    for mod in ("tensorboard", "mlflow"):
        (blocker / mod).mkdir(parents=True)
        (blocker / mod / "__init__.py").write_text(f"raise ImportError('No module named {mod}')\n")
    env = {"PYTHONPATH": str(blocker)}
    tb = orch("export", "--all", "--to", "tensorboard", str(tmp_path / "tb"), results=tree["results"], env=env)
    ml = orch("export", "--all", "--to", "mlflow", "sqlite:///x.db", results=tree["results"], env=env, cwd=tmp_path)
    assert tb.returncode == 2 and "pip install 'orch[tensorboard]'" in tb.stderr and "Traceback" not in tb.stderr
    assert ml.returncode == 2 and "pip install 'orch[mlflow]'" in ml.stderr
    bad = orch("export", "--all", "--to", "wandb", "x", results=tree["results"])
    assert bad.returncode == 2 and "--to wandb" in bad.stderr
    inside = orch("export", "--all", "--to", "tensorboard", str(tree["results"]), results=tree["results"])
    assert inside.returncode == 2 and "inside the results tree" in inside.stderr and tree["run_dir"].is_dir()
