"""The report's pure parts: one logical run across attempts, safe embedding, secrets, destinations."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import UserError
from orchestrator.report import collect
from orchestrator.report.pages import embed, page
from orchestrator.report.site import MARKER, check_destination, file_name


def test_a_resumed_attempt_rolls_back_the_rows_after_its_checkpoint() -> None:
    rows = [{"step": s, "attempt": 1, "loss": 1.0} for s in (10, 20, 30, 40)]
    rows += [{"step": s, "attempt": 2, "loss": 2.0} for s in (30, 40, 50)]
    out, bounds = collect.logical_rows(rows)
    assert [(r["step"], r["attempt"]) for r in out] == [(10, 1), (20, 1), (30, 2), (40, 2), (50, 2)]
    assert bounds == [{"step": 30, "attempt": 2}]


def test_without_attempt_fields_a_step_going_back_starts_a_new_segment() -> None:
    out, bounds = collect.logical_rows([{"step": 1}, {"step": 2}, {"step": 3}, {"step": 2}, {"step": 4}, {"x": 1}])
    assert [r["step"] for r in out] == [1, 2, 4] and bounds == [{"step": 2, "attempt": 2}]
    _, bounds = collect.logical_rows([{"step": 5, "attempt": 1}, {"step": 6, "attempt": 2}])
    assert bounds == [{"step": 6, "attempt": 2}]  # resumed exactly where it stopped
    out, bounds = collect.logical_rows([{"step": 5, "attempt": 1, "v": 1}, {"step": 5, "attempt": 1, "v": 2}])
    assert [r["v"] for r in out] == [2] and bounds == []  # a repeated step within one attempt: the later row


def test_series_expand_per_device_lists_and_skip_non_finite_values() -> None:
    rows = [{"step": 1, "time": 5.0, "loss": 2.0, "mem_peak_gb": [1.5, 2.5], "nonfinite": False, "x": "inf"},
            {"step": 2, "time": 6.0, "loss": None, "mem_peak_gb": [1.0, None]}]
    assert collect.series(rows) == {"loss": [(1, 2.0, 5.0)], "mem_peak_gb/0": [(1, 1.5, 5.0), (2, 1.0, 6.0)],
                                    "mem_peak_gb/1": [(1, 2.5, 5.0)]}
    assert collect.metric_name("val_ppl@2x") == "val_ppl_at_2x"


def test_jsonl_readers_drop_a_torn_line_thin_long_files_and_mask_tokens(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    f.write_text("".join(json.dumps({"step": i, "s": "hf_" + "z" * 30 if i == 3 else ""}) + "\n" for i in range(100))
                 + '{"step": 100, "lo')
    assert [r["step"] for r in collect.read_rows(f)] == list(range(100))
    text, count = collect.raw_rows(f, 10**6)
    assert count == 100 and "hf_" + "z" * 30 not in text and text.endswith("\n") and '"step": 100' not in text
    thin, count = collect.raw_rows(f, 600)
    steps = [json.loads(line)["step"] for line in thin.splitlines()]
    assert count == 100 and len(steps) < 30 and steps[0] == 0 and steps[-1] == 99
    f.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    assert [r["step"] for r in collect.read_rows(f)] == [1, 2]  # a corrupt line falls back to line-by-line


def test_scrub_masks_secret_keys_and_token_values_and_leaves_clean_data_alone() -> None:
    clean = {"train": {"lr": 0.1, "max_new_tokens": 5}, "tokens_seen": 10, "note": "fine"}
    assert collect.scrub(clean) == clean
    dirty = collect.scrub({"env": {"WANDB_API_KEY": "abc", "OMP_NUM_THREADS": "1"}, "x": ["hf_" + "q" * 25]})
    assert dirty["env"]["WANDB_API_KEY"] != "abc" and dirty["env"]["OMP_NUM_THREADS"] == "1"
    assert "hf_" + "q" * 25 not in json.dumps(dirty)


def test_embedded_data_cannot_close_its_script_element() -> None:
    data = {"s": "</script><script>alert(1)</script><!--", "n": float("nan"), "i": float("inf")}
    text = embed(data)
    assert "<" not in text and ">" not in text
    assert json.loads(text) == {"s": data["s"], "n": "nan", "i": "inf"}
    html = page('<b>"x"</b>', "run", data, 2, {"train": '{"a": "</script>"}\n'})
    assert "<title>&lt;b&gt;&quot;x&quot;&lt;/b&gt;</title>" in html
    assert html.count("</script>") == html.count("<script") == 4  # data, train text, two script files
    assert 'src="../../static/report.js"' in html and "default-src 'none'" in html


def test_file_names_are_safe(tmp_path: Path) -> None:
    assert file_name("quick-20250101-000000-ab12") == "quick-20250101-000000-ab12"
    for bad in ("../x", "a/b", "..", ".hidden", "x" * 200):
        name = file_name(bad)
        assert "/" not in name and not name.startswith(".") and len(name) < 40


def test_destinations_that_would_destroy_something_are_refused(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    check_destination(results, tmp_path / "site")  # new: fine
    check_destination(results, results / ".report")  # hidden, inside the tree: fine
    for bad, why in ((tmp_path, "results root"), (results, "results root"), (results / "report", "inside the results")):
        with pytest.raises(UserError, match=why):
            check_destination(results, bad)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not an orch report"):
        check_destination(results, other)
    (other / MARKER).write_text("{}")
    check_destination(results, other)  # a report folder may be replaced


def test_train_trackers_are_accelerates_names() -> None:
    from accelerate.utils import LoggerType

    from orchestrator.spec.schema import TRACKERS, TrainSpec

    assert set(TRACKERS) == {t.value for t in LoggerType}
    assert TrainSpec(max_steps=1, trackers=["tensorboard", "wandb"]).trackers == ["tensorboard", "wandb"]
    with pytest.raises(ValueError, match="unknown tracker 'tensorbored'"):
        TrainSpec(max_steps=1, trackers=["tensorbored"])
