"""Bad input never ends in a traceback: exit 2, file:line, the key, what was expected, a hint.

Each case runs the real CLI (`orch submit --dry-run`) as a user would.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Orch

OK = """\
name: demo
model: {arch: gpt2, n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 16}
data: {builtin: arith}
train: {max_steps: 10, batch_size: 4}
"""

# (case id, spec text (OK with edits), extra CLI args, substrings the error must contain)
CASES = [
    ("unknown-key", OK + "train_steps: 5\n", [], ["s.yaml:5", "train_steps: unknown key"]),
    ("misspelt-nested", OK.replace("batch_size: 4", "batch_sise: 4"), [], ["s.yaml:4", "did you mean 'batch_size'"]),
    ("learning-rate-synonym", OK + "train: {max_steps: 5, learning_rate: 0.1}\n", [], ["duplicate key"]),
    ("wrong-type", OK.replace("n_layer: 2", "n_layer: two"), [], ["s.yaml:2", "model.n_layer", "valid integer"]),
    ("negative", OK.replace("max_steps: 10", "max_steps: -5"), [], ["train.max_steps", "greater than or equal to 1"]),
    ("bad-arch", OK.replace("arch: gpt2", "arch: qwen22"), [], ["s.yaml:2", "model.arch", "unknown model.arch 'qwen22'", "did you mean 'qwen2'"]),
    ("bad-model-class", OK.replace("arch: gpt2", "arch: 'nosuchpkg.models:Net'"), [], ["model.arch", "cannot find the module 'nosuchpkg'"]),
    ("missing-trainer", OK + "trainer: lmm\n", [], ["s.yaml:5", "unknown trainer 'lmm'", "did you mean 'lm'"]),
    ("trainer-not-importable-form", OK + "trainer: 'os.system(1)'\n", [], ["unknown trainer"]),
    ("trainer-module-missing", OK + "trainer: nosuchpkg.train:Trainer\n", [], ["s.yaml:5", "cannot import nosuchpkg.train"]),
    ("set-trainer-unknown", OK, ["--set", "trainer=latentwir"], ["--set", "unknown trainer 'latentwir'", "did you mean 'latentwire'"]),
    ("other-trainers-section", OK + "loss: {tf_weight: 1}\n", [], ["s.yaml:5", "loss: unknown key"]),
    ("bad-sweep-key", OK + "sweep: {grid: {model.d_modle: [16, 32]}}\n", [], ["s.yaml:5", "sweep key 'model.d_modle'", "did you mean 'd_model'"]),
    ("sweep-values-not-list", OK + "sweep: {grid: {model.d_model: 16}}\n", [], ["non-empty list"]),
    ("sweep-bad-value", OK + "sweep: {grid: {model.d_model: [16, big]}}\n", [], ["sweep point 1", "model.d_model"]),
    ("shell-name", OK.replace("name: demo", "name: 'x; touch pwned'"), [], ["s.yaml:1", "not a safe name"]),
    ("dotdot-name", OK.replace("name: demo", "name: ../../etc"), [], ["not a safe name"]),
    ("set-missing-key", OK, ["--set", "train.lrr=0.1"], ["--set", "train.lrr: unknown key; did you mean 'lr'"]),
    ("set-not-key-value", OK, ["--set", "train.lr"], ["expected key.path=value"]),
    ("set-wrong-type", OK, ["--set", "model.d_model=abc"], ["--set", "model.d_model", "valid integer"]),
    ("bad-yaml", OK + "model: [unclosed\n", [], ["s.yaml:", "invalid YAML"]),
    ("top-level-list", "- a\n- b\n", [], ["s.yaml:1", "expected a mapping"]),
    ("missing-name", OK.replace("name: demo\n", ""), [], ["name: required key is missing", "add 'name:'"]),
    ("no-budget", OK.replace("max_steps: 10, ", ""), [], ["train", "set a budget"]),
    ("two-data-sources", OK.replace("{builtin: arith}", "{builtin: arith, path: x.txt}"), [], ["data", "exactly one data source"]),
    ("heads-dont-divide", OK.replace("n_head: 2", "n_head: 3"), [], ["d_model (32) must be divisible by n_head (3)"]),
    ("bad-mem", OK + "resources: {mem: 8X}\n", [], ["resources.mem", "'8G'"]),
    ("bad-time", OK + "resources: {time: tomorrow}\n", [], ["resources.time", "duration"]),
    ("bad-signal", OK + "resources: {signal: KILL}\n", [], ["resources.signal", "unsupported signal"]),
    ("bad-check", OK + "checks: ['val_loss <']\n", [], ["s.yaml:5", "checks.0.expr", "cannot parse"]),
    ("check-with-call", OK + "checks: [\"__import__('os').system('x') == 0\"]\n", [], ["may be called"]),
    ("bad-env-name", OK + "env: {'A B': x}\n", [], ["not a valid environment variable name"]),
    ("secret-in-env", OK + "env: {HF_TOKEN: hf_abc}\n", [], ["s.yaml:5", "env", "HF_TOKEN looks like a secret"]),
    ("extends-missing", "extends: nope.yaml\n" + OK, [], ["s.yaml:1", "extends", "not found"]),
    ("duplicate-key", OK + "seed: 1\nseed: 2\n", [], ["s.yaml:6", "duplicate key"]),
    ("sliding-window-needs-mistral", OK + "model: {sliding_window: 8}\n", [], ["duplicate key"]),
    ("min-lr-above-lr", OK.replace("batch_size: 4", "batch_size: 4, lr: 0.001, min_lr: 0.01"), [], ["min_lr (0.01) is larger than lr"]),
    # input limits: numbers no setting means, alias bombs, grids no cluster runs
    ("set-inf", OK, ["--set", "train.lr=.inf"], ["--set", "train.lr", "infinite number"]),
    ("set-nan", OK, ["--set", "train.lr=.nan"], ["--set", "train.lr", "NaN"]),
    ("forty-digit-steps", OK.replace("max_steps: 10", "max_steps: " + "1234567890" * 4), [],
     ["s.yaml:4", "train.max_steps", "40-digit number"]),
    ("huge-float", OK.replace("batch_size: 4", "batch_size: 4, lr: 1e300"), [], ["s.yaml:4", "train.lr", "1e+300"]),
    ("alias-bomb", OK + "".join(
        f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9 if p else ['"lol"'] * 9) + "]\n"
        for p, c in zip([""] + list("abcdefgh"), "abcdefghi")), [], ["s.yaml", "expands to more than 100,000 values"]),
    ("sweep-grid-too-big", OK + "sweep: {grid: {" + ", ".join(
        f"{k}: [{', '.join(str(i + 1) for i in range(100))}]" for k in ("seed", "train.max_steps", "train.batch_size", "train.log_every")
    ) + "}}\n", [], ["s.yaml:5", "the sweep has 100,000,000 points (100 x 100 x 100 x 100)", "at most 10,000"]),
    ("misspelt-check-metric", OK + "checks: ['best.val_los < 2']\n", [],
     ["s.yaml:5", "'best.val_los' is not a metric trainer 'lm' reports", "did you mean 'val_loss'"]),
    ("unknown-check-metric", OK + "checks: [{expr: 'banana > 1'}]\n", [],
     ["s.yaml:5", "'banana' is not a metric", "trainer 'lm' reports:"]),
    ("bad-retry-class", OK + "retry: {on: [preempted, gremlins]}\n", [], ["retry.on.1", "preempted"]),
]


@pytest.mark.parametrize("case,text,extra,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_exits_2_with_location(orch: Orch, tmp_path: Path, case: str, text: str, extra: list[str], needles: list[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    res = orch("submit", str(path), "--dry-run", *extra, check=2)
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in res.stderr, f"{needle!r} not in:\n{res.stderr}"
    assert not any(orch.results.iterdir()), "a rejected spec must create nothing"


def test_oversized_spec_is_refused_before_parsing(orch: Orch, tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("w") as fh:  # 50 MB: refused from its size, never read whole
        fh.write(OK)
        fh.write(("# " + "x" * 1022 + "\n") * 50 * 1024)
    res = orch("submit", str(path), "--dry-run", check=2)
    assert "big.yaml: the file is 52,4" in res.stderr and "at most 1,048,576" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_directory_as_spec_names_the_specs_in_it(orch: Orch, tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "a.yaml").write_text(OK)
    res = orch("submit", str(tmp_path / "jobs"), check=2)
    assert "is a directory, not a spec file" in res.stderr and "a.yaml" in res.stderr
    assert "IsADirectoryError" not in res.stderr


def test_checks_on_declared_and_derived_metrics_are_accepted(orch: Orch, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(OK + "metrics: {direction: {my_score: max}}\n"
                    "checks: ['best.val_loss < 2', 'max.val_ppl < 90', 'params.total > 0', 'my_score > 0',\n"
                    "         'min.loss < 3 and last.tokens_per_sec > 0']\n")
    orch("submit", str(path), "--dry-run")


def test_a_directory_as_data_path_is_caught_at_submit(orch: Orch, tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "input.txt").write_text("hello\n")
    path = tmp_path / "s.yaml"
    path.write_text(OK.replace("{builtin: arith}", "{path: corpus}"))
    res = orch("submit", str(path), check=2)
    assert "data.path" in res.stderr and "is a directory; data.path names a file" in res.stderr
    assert "input.txt" in res.stderr and "Traceback" not in res.stderr
    assert not any(orch.results.iterdir())


def test_schema_accepts_the_string_form_of_checks(orch: Orch) -> None:
    schema = json.loads(orch("schema").stdout)
    items = schema["properties"]["checks"]["items"]
    assert {"type": "string", "description": "a check expression"} in items["anyOf"]


def test_slurm_sweep_dry_run_shows_the_array_line(orch: Orch, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(OK + "sweep: {grid: {model.d_model: [16, 32, 64]}, max_parallel: 2}\n")
    res = orch("submit", str(path), "--backend", "slurm", "--dry-run")
    assert "#SBATCH --array=0-2%2" in res.stdout, res.stdout[-2000:]
    assert not any(orch.results.iterdir()), "a dry run writes nothing"


def test_missing_spec_file(orch: Orch) -> None:
    res = orch("submit", "no/such.yaml", check=2)
    assert "no/such.yaml: file not found" in res.stderr


def test_missing_data_file_is_caught_at_submit(orch: Orch, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(OK.replace("{builtin: arith}", "{path: data/missing.txt}"))
    res = orch("submit", str(path), check=2)
    assert f"data.path: {tmp_path}/data/missing.txt does not exist" in res.stderr
    assert not any(orch.results.iterdir())


def test_unknown_run_and_bad_flags(orch: Orch) -> None:
    res = orch("logs", "nosuchrun", check=2)
    assert "no run matches 'nosuchrun'" in res.stderr and "hint:" in res.stderr
    res = orch("status", "--state", "BOGUS", check=2)
    assert "unknown state BOGUS" in res.stderr
    res = orch("submit", check=2)
    assert "error:" in res.stderr and "Traceback" not in res.stderr
    res = orch("frobnicate", check=2)
    assert "invalid choice" in res.stderr


def test_schema_of_an_unknown_trainer_lists_the_known_ones(orch: Orch) -> None:
    res = orch("schema", "--trainer", "nope", check=2)
    assert "unknown trainer 'nope'" in res.stderr and "registered: latentwire, lm" in res.stderr
    assert "Traceback" not in res.stderr


def test_dry_run_shows_resolved_spec_and_script(orch: Orch, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(OK + "sweep: {grid: {model.d_model: [16, 32, 64]}, max_parallel: 2}\n")
    res = orch("submit", str(path), "--dry-run")
    assert "a sweep of 3 runs" in res.stdout and "at most 2 at a time" in res.stdout
    assert res.stdout.count("(job script)") == 3
    assert "d_model: 64" in res.stdout
    assert "nothing was submitted" in res.stdout
    assert not any(orch.results.iterdir())
