"""The status table's layout (fits any width, keeps the required columns), short ids, the piped
progress log (no repeated lines), the profile's umask setting and the job scripts' umask line."""
from __future__ import annotations

import random

import pytest

from orchestrator.commands.progress import PipeLog
from orchestrator.commands.table import Column, cut, fit, shortest_unique_suffixes
from orchestrator.errors import SpecErrors
from orchestrator.spec.profile import ClusterProfile, load_profile, umask_line

COLUMNS = [Column("RUN", required=True, min_width=4), Column("NAME", priority=3, flex=True, min_width=6, soft=16),
           Column("STATE", required=True), Column("STEP", priority=6, right=True),
           Column("%", required=True, right=True), Column("TOK/S", priority=4, right=True),
           Column("BEAT", priority=7, right=True), Column("NOTE", required=True, flex=True, min_width=8, soft=20)]


def _row(rng: random.Random) -> list[str]:
    word = lambda n: "".join(rng.choice("abcdefghij-") for _ in range(rng.randint(1, n)))  # noqa: E731
    return [word(8), word(45), rng.choice(["RUNNING", "FAILED", "COMPLETED"]), f"{rng.randint(0, 99999)}/100000",
            str(rng.randint(0, 100)), f"{rng.random() * 1e5:.0f}", "12s", "data_error: " + word(120)]


@pytest.mark.parametrize("width", [40, 60, 80, 81, 100, 120, 200])
def test_fit_never_exceeds_the_width_and_keeps_required_columns(width: int) -> None:
    rng = random.Random(width)
    for _ in range(30):
        rows = [_row(rng) for _ in range(rng.randint(1, 6))]
        lines = fit(COLUMNS, rows, width)
        assert all(len(line) <= width for line in lines), (width, lines)
        header = lines[0].split()
        if width >= 60:
            assert {"RUN", "STATE", "%", "NOTE"} <= set(header), lines[0]
            for line, row in zip(lines[1:], rows):
                assert row[2] in line and "data_e" in line  # the state and the failure class survive


def test_fit_drops_least_important_first_and_gives_room_back_to_note() -> None:
    rows = [["3f2a", "quickstart", "FAILED", "10/200", "5", "12345", "3s", "data_error: no such file " * 4]]
    wide = fit(COLUMNS, rows, 200)
    assert wide[0].split() == [c.header for c in COLUMNS] and rows[0][7].strip() in wide[1]
    for width in (45, 50, 60):
        narrow = fit(COLUMNS, rows, width)
        kept = set(narrow[0].split())
        dropped = [c for c in COLUMNS if c.header not in kept]
        assert dropped and all(c.priority >= max([k.priority for k in COLUMNS if k.header in kept and not k.required],
                                                 default=0) for c in dropped), (width, narrow[0])
        assert "BEAT" not in kept  # the least important goes first
        assert len(narrow[1]) == width and narrow[1].endswith("~")  # the note fills the line, cut visibly


def test_cut_marks_truncation() -> None:
    assert cut("abcdef", 6) == "abcdef" and cut("abcdefg", 6) == "abcde~" and cut("ab", 1) == "a"


def test_shortest_unique_suffixes_are_unique_and_short() -> None:
    ids = ["quick-20250314-101500-0a1b", "quick-20250314-101501-0a1b", "quick-20250314-101500-77cd", "x-abcd", "abcd"]
    short = shortest_unique_suffixes(ids)
    assert short["quick-20250314-101500-77cd"] == "77cd"
    assert short["quick-20250314-101500-0a1b"] == "0-0a1b" and short["quick-20250314-101501-0a1b"] == "1-0a1b"
    assert short["abcd"] == "abcd" and short["x-abcd"] == "-abcd"  # an id that is a suffix of another: itself
    for rid, s in short.items():
        assert rid.endswith(s) and sum(o.endswith(s) for o in ids) == 1 or s == rid


def _summary(state: str, step: int | None, total: int = 200, loss: float = 2.0) -> dict:
    return {"run_id": "tiny-20250101-000000-abcd", "name": "tiny", "state": state, "step": step, "total_steps": total,
            "progress": step / total if step is not None else None, "metrics": {"train_loss": loss},
            "tokens_per_sec": 1234.0, "eta_s": 30, "failure": None, "reason": None, "stop_reason": None,
            "damaged": None, "phase": "train", "run_dir": "/r"}


def test_pipe_log_prints_state_changes_and_tenths_never_the_same_line() -> None:
    log, ids = PipeLog(), {"tiny-20250101-000000-abcd": "abcd"}
    seen = []
    for state, step in [("QUEUED", None), ("QUEUED", None), ("RUNNING", 0), ("RUNNING", 3), ("RUNNING", 19),
                        ("RUNNING", 20), ("RUNNING", 21), ("RUNNING", 150), ("RUNNING", 155), ("COMPLETED", 200),
                        ("COMPLETED", 200)]:
        seen += log.lines([_summary(state, step)], ids, 120)
    bodies = [line.split("  ", 1)[1] for line in seen]
    assert len(bodies) == len(set(bodies)) == 5, seen  # QUEUED, 0%, 10%, 75%, COMPLETED
    assert bodies[0].startswith("abcd  tiny  QUEUED") and "COMPLETED  200/200 (100%)" in bodies[-1]
    assert "150/200 (75%)  loss 2" in bodies[3] and "1,234 tok/s" in bodies[3] and "ETA 30s" in bodies[3]


def test_profile_umask_is_a_quoted_octal(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert ClusterProfile(umask="0o002").umask == "0002" and ClusterProfile(umask="022").umask_bits == 0o22
    assert umask_line(ClusterProfile(umask="0002")) == ["umask 0002"] and umask_line(ClusterProfile()) == []
    path = tmp_path / "cluster.yaml"
    monkeypatch.setenv("ORCH_CLUSTER", str(path))
    for text, phrase in [("umask: 0002\n", "quoted octal string"), ("umask: '0089'\n", "not an octal umask"),
                         ("umask: ''\n", "not an octal umask")]:
        path.write_text(text)
        with pytest.raises(SpecErrors) as err:
            load_profile()
        assert phrase in err.value.render() and "umask" in err.value.render(), err.value.render()
    path.write_text('umask: "0002"\n')
    assert load_profile().umask_bits == 0o002


def test_heartbeat_carries_progress_through_eval_and_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.record.heartbeat import Heartbeat, read_heartbeat

    hb = Heartbeat(tmp_path / "heartbeat.json")
    hb.beat(force=True, phase="train", step=10, total_steps=100, train_loss=2.0, tokens_per_sec=100.0, eta_s=50)
    hb.beat(force=True, phase="eval", step=10)
    beat = read_heartbeat(tmp_path / "heartbeat.json")
    assert beat["phase"] == "eval" and beat["train_loss"] == 2.0 and beat["tokens_per_sec"] == 100.0
    assert beat["eta_s"] == 50 and beat["total_steps"] == 100


def test_status_takes_rate_loss_and_eta_from_the_training_log_when_the_heartbeat_has_none(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import time

    from orchestrator.commands.runrows import summarize
    from orchestrator.lifecycle.refresh import refresh
    from orchestrator.record.paths import RunPaths
    from orchestrator.record.tree import Run

    paths = RunPaths(tmp_path / "tiny" / "tiny-20250101-000000-abcd")
    (paths.root / "logs").mkdir(parents=True)
    paths.run_json.write_text(json.dumps({"run_id": paths.run_id, "name": "tiny", "state": "RUNNING",
                                          "total_steps": 300, "attempts": [{"n": 1, "job_id": "1@1"}]}))
    paths.heartbeat.write_text(json.dumps({"time": time.time(), "phase": "eval", "step": 50, "total_steps": 300,
                                           "last_eval": {"step": 50, "train_loss": 2.5, "val_loss": 2.6}}))
    paths.diagnostics.write_text(json.dumps({"step": 50, "loss": 1.9, "tokens_per_sec": 8000.0, "step_time": 0.02}) + "\n")
    [view] = refresh([Run(paths)], poll=False)
    s = summarize(view)
    assert s["tokens_per_sec"] == 8000.0 and abs(s["eta_s"] - 5.0) < 1e-9 and s["phase"] == "eval"
    assert s["metrics"]["train_loss"] == 1.9 and s["metrics"]["val_loss"] == 2.6  # the current loss, not the eval's
