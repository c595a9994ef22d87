"""Damaged run folders, the ways results trees really get damaged, for the reliability tests.

`make_damaged(results)` writes 20 run folders that `ResultsRoot` must report as damaged (a
truncated or empty run.json, JSON that is not a record, an unknown state, attempts that are not a
list, a run.json that is a folder or a dangling link, an empty folder, an interrupted creation...)
and returns {run_id: a phrase the reported problem must contain}. `make_odd(results)` writes runs
whose record is fine but whose other files are not (garbage heartbeat, missing spec.yaml, unknown
trainer): those are served, not reported as damaged.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from tests.integration.runfactory import make_run

GROUP = "broken"
OLD = time.time() - 3600  # older than the grace given to a run folder being created


def _record(run_id: str, **over: object) -> dict[str, object]:
    rec: dict[str, object] = {"run_id": run_id, "name": GROUP, "state": "COMPLETED", "backend": "local",
                              "attempts": [{"n": 1, "job_id": "1@1", "state": "COMPLETED", "exit_code": 0}]}
    rec.update(over)
    return rec


# run_id -> (what run.json holds: bytes, or a callable making the folder), a phrase of the problem
CASES: dict[str, tuple[object, str]] = {
    "truncated": (b'{"run_id": "truncated", "name": "broken", "sta', "not valid JSON"),
    "truncated-attempts": (b'{"run_id": "x", "state": "RUNNING", "attempts": [{"n": 1, "job_id": "12', "not valid JSON"),
    "empty-list": (b"[]", "expected a JSON object, found list"),
    "json-null": (b"null", "expected a JSON object, found NoneType"),
    "json-number": (b"42", "expected a JSON object, found int"),
    "json-string": (b'"COMPLETED"', "expected a JSON object, found str"),
    "empty-file": (b"", "empty file"),
    "failure-string": (json.dumps(_record("failure-string", state="FAILED", failure="it broke")).encode(),
                       "'failure' is not an object"),
    "binary": (os.urandom(64) + b"\xff\xfe\x00", "not valid JSON"),
    "nul-bytes": (b'{"run_id": "nul\x00\x00\x00', "not valid JSON"),
    "trailing-garbage": (b'{"state": "COMPLETED"} and then some', "not valid JSON"),
    "unknown-state": (json.dumps(_record("unknown-state", state="EXPLODED")).encode(), "unknown state 'EXPLODED'"),
    "state-null": (json.dumps(_record("state-null", state=None)).encode(), "unknown state None"),
    "state-number": (json.dumps(_record("state-number", state=3)).encode(), "unknown state 3"),
    "attempts-string": (json.dumps(_record("attempts-string", attempts="many")).encode(), "'attempts' is not a list"),
    "attempts-numbers": (json.dumps(_record("attempts-numbers", attempts=[1, 2])).encode(), "'attempts' is not a list"),
    "attempts-object": (json.dumps(_record("attempts-object", attempts={"n": 1})).encode(), "'attempts' is not a list"),
    "run-json-folder": ("folder", "Is a directory"),
    "dangling-link": ("dangling", "no run.json"),
    "empty-folder": ("empty", "no run.json"),
}
assert len(CASES) == 20


def make_damaged(results: Path) -> dict[str, str]:
    """The 20 damaged folders under results/broken/; {run_id: phrase of the expected problem}."""
    base = results / GROUP
    base.mkdir(parents=True, exist_ok=True)
    for run_id, (content, _) in CASES.items():
        folder = base / run_id
        folder.mkdir()
        (folder / "logs").mkdir()
        if isinstance(content, bytes):
            (folder / "run.json").write_bytes(content)
            (folder / "spec.yaml").write_text("name: broken\ntrainer: lm\n")
        elif content == "folder":
            (folder / "run.json").mkdir()
        elif content == "dangling":
            os.symlink(folder / "gone.json", folder / "run.json")
        elif content == "empty":
            os.rmdir(folder / "logs")
        os.utime(folder, (OLD, OLD))
    return {run_id: phrase for run_id, (_, phrase) in CASES.items()}


def make_odd(results: Path) -> dict[str, str]:
    """Runs with a sound record and something else wrong; {run_id: what is wrong}."""
    odd = {}
    p = make_run(results, "odd", "odd-garbage-heartbeat", seed=11)
    p.heartbeat.write_bytes(b"\x00\x01 not json {")
    odd[p.run_id] = "garbage heartbeat.json"
    p = make_run(results, "odd", "odd-list-heartbeat", seed=12)
    p.heartbeat.write_text('[1, 2, {"time": "soon"}]')
    odd[p.run_id] = "heartbeat.json is a list"
    p = make_run(results, "odd", "odd-no-spec", seed=13)
    p.spec.unlink()
    odd[p.run_id] = "missing spec.yaml"
    p = make_run(results, "odd", "odd-unknown-trainer", seed=14)
    spec = yaml.safe_load(p.spec.read_text())
    spec["trainer"] = "nosuchtrainer"
    p.spec.write_text(yaml.safe_dump(spec))
    odd[p.run_id] = "unknown trainer in spec.yaml"
    return odd
