"""Runs into MLflow (any tracking URI: `sqlite:///mlflow.db`, a folder, a server).

One MLflow run per orch run (found again by its `orch.run_id` tag) in the experiment named after
the run (or `--experiment`): params are the flattened, redacted spec; metrics carry the trainer's
global steps across attempts; tags hold the state, attempts, failure class and the git commit from
provenance.json (`mlflow.source.git.commit`); artifacts are metrics.json, checks.json and the
training-curve plots.

Incremental: the tag `orch.export` records the last exported step of every metric, and is written
in the same `log_batch` call as the metrics it accounts for, so a killed export never makes the
next one log a point twice. MLflow's metric history is append-only: points a requeued attempt
rewrote after they were exported stay as first exported; points after them are added.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from orchestrator.export.source import Source, need

MARKER_TAG = "orch.export"
BATCH = 900  # MLflow's log_batch takes at most 1000 metrics and 100 params/tags per call
PARAM_BATCH = 90
MAX_PARAM = 6000  # characters of a param value MLflow accepts
_STATUS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "TIMEOUT": "FAILED", "CANCELLED": "KILLED", "PREEMPTED": "KILLED"}


@dataclass
class MLflowResult:
    run_id: str
    mlflow_run_id: str
    metrics: int = 0
    params: int = 0
    artifacts: list[str] = field(default_factory=list)
    created: bool = False


def client(uri: str) -> Any:
    tracking = need("mlflow.tracking", "mlflow")
    return tracking.MlflowClient(tracking_uri=uri)


def _experiment(cl: Any, name: str) -> str:
    exp = cl.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            cl.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)
    return str(cl.create_experiment(name))


def _find(cl: Any, exp_id: str, run_id: str) -> Any:
    quoted = run_id.replace("'", "")  # run ids are plain names; never let one end the filter's string
    found = cl.search_runs([exp_id], filter_string=f"tags.`orch.run_id` = '{quoted}'", max_results=2)
    return found[0] if found else None


def export_run(src: Source, uri: str, experiment: Optional[str] = None) -> MLflowResult:
    """Create or update the MLflow run of `src`; see the module docstring."""
    entities = need("mlflow.entities", "mlflow")
    cl = client(uri)
    exp_id = _experiment(cl, experiment or src.group)
    run = _find(cl, exp_id, src.run_id)
    created = run is None
    tags = src.tags()
    if run is None:
        start = int((src.created or 0) * 1000) or None
        run = cl.create_run(exp_id, start_time=start, run_name=src.run_id, tags=tags)
    mid = run.info.run_id
    result = MLflowResult(src.run_id, mid, created=created)
    try:
        marker = json.loads(run.data.tags.get(MARKER_TAG) or "{}")
    except ValueError:
        marker = {}
    last: dict[str, int] = dict(marker.get("steps") or {})
    sent: dict[str, str] = dict(marker.get("artifacts") or {})

    # params: only those not logged yet (MLflow params are immutable)
    have = run.data.params
    params = [entities.Param(k, str(v)[:MAX_PARAM]) for k, v in sorted(src.hparams.items())
              if k not in have and len(k) <= 250]
    for i in range(0, len(params), PARAM_BATCH):
        cl.log_batch(mid, params=params[i:i + PARAM_BATCH])
    result.params = len(params)

    # metrics: every point after the last exported step of its key, with the marker in the same call
    pending: list[Any] = []
    for key, points in sorted(src.scalars.items()):
        after = last.get(key)
        for step, value, t in points:
            if after is None or step > after:
                pending.append(entities.Metric(key, value, int((t or 0) * 1000), step))
    for i in range(0, len(pending), BATCH):
        chunk = pending[i:i + BATCH]
        for m in chunk:
            last[m.key] = max(m.step, last.get(m.key, m.step))
        cl.log_batch(mid, metrics=chunk, tags=[entities.RunTag(MARKER_TAG, _marker(last, sent))])
    result.metrics = len(pending)

    # tags describe the run now (state, attempts, failure); mlflow.* names show in MLflow's UI
    tags["mlflow.runName"] = src.run_id
    if "git.commit" in tags:
        tags["mlflow.source.git.commit"] = tags["git.commit"]
    changed_tags = [entities.RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
    if changed_tags:
        cl.log_batch(mid, tags=changed_tags)

    result.artifacts = _artifacts(cl, mid, src, sent, last)
    status = _STATUS.get(src.state)
    if status and run.info.status != status:
        cl.set_terminated(mid, status=status, end_time=int((src.ended or 0) * 1000) or None)
    return result


def _artifacts(cl: Any, mid: str, src: Source, sent: dict[str, str], steps: dict[str, int]) -> list[str]:
    """metrics.json, checks.json and the curve plots, uploaded when their content changed."""
    files: dict[str, bytes] = {}
    for path in (src.paths.metrics, src.paths.checks):
        try:
            files[path.name] = path.read_bytes()
        except OSError:
            pass
    files.update(_plots(src))
    changed = {name: data for name, data in files.items() if sent.get(name) != hashlib.sha1(data).hexdigest()}
    if not changed:
        return []
    with tempfile.TemporaryDirectory(prefix="orch-mlflow-") as tmp:
        for name, data in changed.items():
            (Path(tmp) / name).write_bytes(data)
            cl.log_artifact(mid, str(Path(tmp) / name), artifact_path="orch")
    sent.update({name: hashlib.sha1(data).hexdigest() for name, data in changed.items()})
    cl.set_tag(mid, MARKER_TAG, _marker(steps, sent))
    return sorted(changed)


def _marker(steps: dict[str, int], artifacts: dict[str, str]) -> str:
    return json.dumps({"format": 1, "steps": steps, "artifacts": artifacts}, separators=(",", ":"), sort_keys=True)


def _plots(src: Source) -> dict[str, bytes]:
    """The run's curves as PNGs (the same figures as `orch plot`), when matplotlib can draw them."""
    try:
        from orchestrator.analysis.plotting import length_generalization, training_curves
        from orchestrator.analysis.rundata import RunData
    except ImportError:
        return {}
    d = RunData(src.paths.root, "run")
    out = {}
    png = training_curves(d)
    if png:
        out["curves.png"] = png
    if d.length_keys():
        png = length_generalization(d)
        if png:
            out["length_generalization.png"] = png
    return out
