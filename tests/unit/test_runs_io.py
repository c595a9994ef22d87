"""Atomic state files, tolerant JSONL readers, run ids and prefixes, provenance without secrets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.record.atomicio import append_jsonl, atomic_write_json, read_json, read_jsonl, tail_jsonl
from orchestrator.errors import RecordDamaged, RunNotFound, UserError
from orchestrator.record.paths import RunPaths, check_name
from orchestrator.lifecycle.provenance import safe_env
from orchestrator.record.tree import ResultsRoot


def test_tail_reads_last_records_and_skips_truncated_line(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    for i in range(5000):
        append_jsonl(p, {"step": i, "loss": 1.0 / (i + 1)})
    with open(p, "ab") as fh:
        fh.write(b'{"step": 5000, "lo')  # a writer killed mid-line
    assert [r["step"] for r in tail_jsonl(p, 3)] == [4997, 4998, 4999]
    assert read_jsonl(p)[-1]["step"] == 4999
    assert tail_jsonl(tmp_path / "missing.jsonl") == []


def test_append_after_a_torn_tail_starts_a_new_line(tmp_path: Path) -> None:
    """A full disk (or a kill) cut the last line short: the next record must not be glued onto it."""
    p = tmp_path / "d.jsonl"
    append_jsonl(p, {"step": 1})
    with open(p, "ab") as fh:
        fh.write(b'{"time": 1')  # the torn tail
    append_jsonl(p, {"step": 2})
    append_jsonl(p, {"step": 3})
    assert p.read_bytes() == b'{"step": 1}\n{"time": 1\n{"step": 2}\n{"step": 3}\n'
    assert [r["step"] for r in read_jsonl(p)] == [1, 2, 3] and [r["step"] for r in tail_jsonl(p, 5)] == [1, 2, 3]


def test_a_run_folder_being_created_is_not_damaged_until_it_is_old(tmp_path: Path) -> None:
    """create_run writes run.json last: a young folder without it is skipped, an old one is damaged."""
    root = ResultsRoot(tmp_path)
    good = root.create_run("exp", {})
    folder = tmp_path / "exp" / "exp-being-made"
    folder.mkdir()
    assert [r.run_id for r in root.iter_runs()] == [good.run_id] and root.scan()[1] == []
    os.utime(folder, (1e9, 1e9))
    runs, damaged = root.scan()
    assert [r.run_id for r in runs] == [good.run_id]
    assert [(d.run_id, d.group, d.path) for d in damaged] == [("exp-being-made", "exp", folder)]
    assert "no run.json" in damaged[0].problem
    with pytest.raises(RecordDamaged, match="exp-being-made is damaged: .*no run.json"):
        root.resolve("exp-being-made")
    found: list = []
    assert [r.run_id for r in root.resolve_many(["exp"], found)] == [good.run_id] and len(found) == 1


def test_tail_cost_does_not_depend_on_history_length(tmp_path: Path) -> None:
    """tail_jsonl seeks from the end: it reads a few KB whatever the file size."""
    p = tmp_path / "big.jsonl"
    with open(p, "w") as fh:
        for i in range(200_000):
            fh.write(json.dumps({"step": i, "val_loss": 2.0}) + "\n")
    import builtins

    reads: list[int] = []
    real_open = builtins.open

    class Counting:
        def __init__(self, fh):  # type: ignore[no-untyped-def]
            self.fh = fh

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *a):  # type: ignore[no-untyped-def]
            self.fh.close()

        def read(self, n=-1):  # type: ignore[no-untyped-def]
            data = self.fh.read(n)
            reads.append(len(data))
            return data

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self.fh, name)

    builtins.open = lambda *a, **k: Counting(real_open(*a, **k))  # type: ignore[assignment]
    try:
        assert tail_jsonl(p, 1)[0]["step"] == 199_999
    finally:
        builtins.open = real_open  # type: ignore[assignment]
    assert sum(reads) <= 16384 < p.stat().st_size


def test_atomic_write_leaves_old_or_new_never_partial(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    atomic_write_json(p, {"v": 1})
    # A writer killed between temp-file write and rename leaves the old file intact.
    code = ("import os, sys; sys.path.insert(0, %r)\n"
            "from orchestrator.record import atomicio\n"
            "os.replace = lambda *a: os._exit(9)\n"
            "atomicio.atomic_write_json(%r, {'v': 2})\n") % (str(Path(__file__).parents[2]), str(p))
    res = subprocess.run([sys.executable, "-c", code])
    assert res.returncode == 9
    assert read_json(p) == {"v": 1}
    atomic_write_json(p, {"v": 3})
    assert read_json(p) == {"v": 3}


def test_run_ids_are_readable_unique_and_resolvable(tmp_path: Path) -> None:
    root = ResultsRoot(tmp_path)
    a = root.create_run("exp", {})
    b = root.create_run("exp", {})
    assert a.run_id != b.run_id and a.run_id.startswith("exp-")
    assert root.resolve(a.run_id).run_id == a.run_id
    common = len(os.path.commonprefix([a.run_id, b.run_id]))
    assert root.resolve(a.run_id[: common + 1]).run_id == a.run_id  # the shortest unique prefix
    with pytest.raises(RunNotFound, match="matches 2 runs"):
        root.resolve("exp-")
    assert root.resolve("exp").run_id == b.run_id  # a name means its newest run
    with pytest.raises(RunNotFound):
        root.resolve("nope")
    assert {r.run_id for r in root.resolve_many(["exp"])} == {a.run_id, b.run_id}
    assert json.loads(a.paths.run_json.read_text())["state"] == "PENDING"


def test_run_update_is_serialized_across_processes(tmp_path: Path) -> None:
    run = ResultsRoot(tmp_path).create_run("exp", {"counter": 0})
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from orchestrator.record.tree import Run\nfrom orchestrator.record.paths import RunPaths\nfrom pathlib import Path\n"
            "r = Run(RunPaths(Path(%r)))\n"
            "for _ in range(50): r.annotate(lambda rec: rec.__setitem__('counter', rec['counter'] + 1))\n"
            ) % (str(Path(__file__).parents[2]), str(run.paths.root))
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert all(p.wait() == 0 for p in procs)
    assert read_json(run.paths.run_json)["counter"] == 200


@pytest.mark.parametrize("bad", ["x; touch pwned", "../up", "a/b", "", ".hidden", "$(id)", "a b", "x" * 200])
def test_unsafe_names_are_rejected(bad: str) -> None:
    with pytest.raises(UserError):
        check_name(bad)


def test_nothing_escapes_the_results_root(tmp_path: Path) -> None:
    root = ResultsRoot(tmp_path / "results")
    with pytest.raises(UserError):
        root.run_paths("..", "x")
    assert RunPaths(tmp_path / "r").stdout(2).name == "stdout-2.log"


def test_provenance_env_drops_secrets() -> None:
    env = {"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz", "WANDB_API_KEY": "k", "DB_PASSWORD": "p",
           "AWS_SECRET_ACCESS_KEY": "s", "SLURM_JOB_ID": "12", "CUDA_VISIBLE_DEVICES": "0,1",
           "SLURM_COMMENT": "hf_abcdefghijklmnopqrstuvwxyz0123", "HOME": "/root"}
    kept = safe_env(env)
    assert kept == {"SLURM_JOB_ID": "12", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert not any("hf_" in v for v in kept.values())
    assert os.environ is not None
