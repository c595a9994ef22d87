"""TensorBoard event files for runs: `DEST/<name>/<run_id>/events.out.tfevents.*`.

One TensorBoard run per orch run, whatever its number of attempts: steps are the trainer's global
steps, and rows an attempt rolled back (it resumed from an earlier checkpoint) are left out. The
resolved spec goes in as hparams (the HParams dashboard), with a session end once the run is over.
Written with the `tensorboard` package's own event writer and protos (no TensorFlow, no torch).

Incremental: `orch-export.json` beside the event files records, per tag, the last exported step
and a digest of the points up to it. A new export appends an event file holding only newer
points; when older points changed (a requeued attempt rewrote steps already exported) the run's
folder is rewritten whole, so TensorBoard never shows a step twice. An event file the marker does
not list (left by an export that was killed before writing the marker) is deleted first.
"""
from __future__ import annotations

import hashlib
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from orchestrator.export.source import Source, need
from orchestrator.record.atomicio import atomic_write_json, read_json, replace_dir
from orchestrator.record.paths import check_name

MARKER = "orch-export.json"
FORMAT = 1
_STATUS = {"COMPLETED": 1, "FAILED": 2, "CANCELLED": 4, "TIMEOUT": 2, "PREEMPTED": 4}  # hparams api_pb2.Status


@dataclass
class TBResult:
    run_id: str
    folder: Path
    added: int
    rewritten: bool


def _digest(points: list[tuple[int, float, Any]]) -> str:
    h = hashlib.sha1()
    for step, value, _ in points:
        h.update(f"{step}:{value!r};".encode())
    return h.hexdigest()


def _hparams_events(src: Source, start: bool, end: bool) -> list[Any]:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    events = []
    if start:
        info = plugin_data_pb2.SessionStartInfo(group_name=src.group, start_time_secs=src.created or time.time())
        for k, v in src.hparams.items():
            if isinstance(v, bool):
                info.hparams[k].bool_value = v
            elif isinstance(v, (int, float)):
                info.hparams[k].number_value = float(v)
            else:
                info.hparams[k].string_value = str(v)
        data = plugin_data_pb2.HParamsPluginData(session_start_info=info, version=metadata.PLUGIN_DATA_VERSION)
        value = summary_pb2.Summary.Value(tag=metadata.SESSION_START_INFO_TAG,
                                          metadata=metadata.create_summary_metadata(data))
        events.append(event_pb2.Event(wall_time=src.created or time.time(), summary=summary_pb2.Summary(value=[value])))
    if end:
        info_end = plugin_data_pb2.SessionEndInfo(status=_STATUS.get(src.state, 0), end_time_secs=src.ended or time.time())
        data = plugin_data_pb2.HParamsPluginData(session_end_info=info_end, version=metadata.PLUGIN_DATA_VERSION)
        value = summary_pb2.Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                                          metadata=metadata.create_summary_metadata(data))
        events.append(event_pb2.Event(wall_time=src.ended or time.time(), summary=summary_pb2.Summary(value=[value])))
    return events


def _write_events(folder: Path, points: dict[str, list[tuple[int, float, Any]]], extra: list[Any]) -> Optional[str]:
    """One new event file in `folder` with `extra` events and the points; its name, or None if empty."""
    if not extra and not any(points.values()):
        return None
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    suffix = f".orch-{secrets.token_hex(4)}"  # names this export's file
    writer = EventFileWriter(str(folder), max_queue_size=1000, flush_secs=3600, filename_suffix=suffix)
    try:
        for ev in extra:
            writer.add_event(ev)
        rows = sorted((step, t or 0.0, tag, value) for tag, pts in points.items() for step, value, t in pts)
        for step, t, tag, value in rows:
            writer.add_event(event_pb2.Event(wall_time=t or time.time(), step=step, summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])))
    finally:
        writer.close()
    return next(p.name for p in folder.glob(f"events.out.tfevents.*{suffix}"))


def export_run(src: Source, dest: Path) -> TBResult:
    """Bring `dest/<name>/<run_id>/` up to date with the run; see the module docstring."""
    need("tensorboard", "tensorboard")
    folder = Path(dest) / check_name(src.group, "run name") / check_name(src.run_id, "run id")
    marker = read_json(folder / MARKER, default=None)
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        marker = None
    scalars = src.scalars
    terminal = src.view.state.terminal
    rewrite = marker is None
    new: dict[str, list[tuple[int, float, Any]]] = {}
    if marker is not None:
        for tag, (last, digest) in marker.get("tags", {}).items():
            if _digest([p for p in scalars.get(tag, []) if p[0] <= last]) != digest:
                rewrite = True  # exported points changed: a requeued attempt rewrote them
                break
    if rewrite:
        return _rewrite(src, folder, scalars, terminal)
    assert marker is not None
    for stray in folder.glob("events.out.tfevents.*"):
        if stray.name not in marker.get("files", []):
            stray.unlink()  # from an export killed before it recorded the file
    tags = marker.get("tags", {})
    for tag, pts in scalars.items():
        last = tags.get(tag, [None])[0]
        fresh = [p for p in pts if last is None or p[0] > last]
        if fresh:
            new[tag] = fresh
    end = terminal and not marker.get("ended")
    name = _write_events(folder, new, _hparams_events(src, False, True) if end else [])
    if name is None:
        return TBResult(src.run_id, folder, 0, False)
    files = marker.get("files", []) + [name]
    atomic_write_json(folder / MARKER, _marker(scalars, files, terminal or bool(marker.get("ended"))))
    return TBResult(src.run_id, folder, sum(len(v) for v in new.values()), False)


def _marker(scalars: dict[str, list[tuple[int, float, Any]]], files: list[str], ended: bool) -> dict[str, Any]:
    return {"format": FORMAT, "files": files, "ended": ended,
            "tags": {tag: [pts[-1][0], _digest(pts)] for tag, pts in scalars.items() if pts}}


def _rewrite(src: Source, folder: Path, scalars: dict[str, list[tuple[int, float, Any]]], terminal: bool) -> TBResult:
    """The whole run into a fresh folder, renamed over the old one."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        name = _write_events(tmp, scalars, _hparams_events(src, True, terminal))
        atomic_write_json(tmp / MARKER, _marker(scalars, [name] if name else [], terminal))
        replace_dir(tmp, folder, folder.parent / f".{folder.name}.old-{secrets.token_hex(4)}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TBResult(src.run_id, folder, sum(len(v) for v in scalars.values()), True)

