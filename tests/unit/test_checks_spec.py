"""Malformed check expressions are rejected when a spec is validated: `orch submit --dry-run` exits 2
with a message naming the spec line and what is wrong, never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.checks.expr import CheckSyntaxError, compile_check
from orchestrator.errors import SpecErrors
from orchestrator.spec.schema import load_spec

BAD = [
    ("val_loss <", "cannot parse"),
    ("", "non-empty"),
    ("   ", "non-empty"),
    ("val_loss", "not a condition"),
    ("1 < 2", "names no metric"),
    ("__import__('os').system('true') == 0", "may be called"),
    ("open('/etc/passwd') == 1", "may be called"),
    ("val_loss.__class__ < 1", "cannot start with '_'"),
    ("(lambda: 1)() < val_loss", "may be called"),
    ("[x for x in val_loss] == 1", "not allowed"),
    ("val_loss < (2 if best.val_loss else 3)", "not allowed"),
    ("(val_loss := 3) > 1", "not allowed"),
    ("val_loss in [1, 2]", "unsupported comparison"),
    ("val_loss is None", "unsupported comparison"),
    ("f'{val_loss}' == 'x'", "not allowed"),
    ("val_loss[0] < 1", "not allowed"),
    ("val_loss < 2; import os", "cannot parse"),
    ("abs(x=val_loss) < 1", "may be called"),
    ("max() < val_loss", "needs arguments"),
    ("val_loss < " + "1 + " * 200 + "1", "limited to 500"),
    ("val_loss << 2 < 1", "not allowed"),
    ("getattr(val_loss, 'real') < 1", "may be called"),
    ("val_loss = 2", "'=='"),
    ("2 ** 2 ** 100 < val_loss", "exponent"),
    ("'ab' * 3 == name", "arithmetic on the string"),
    ("val_loss < None", "unsupported constant"),
    ("val_loss < b'x'", "unsupported constant"),
    ("val_loss and", "cannot parse"),
]


def _spec(tmp_path: Path, expr: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text("name: chk\ntrain:\n  max_steps: 10\nchecks:\n  - val_ppl < 500\n"
                 f"  - expr: {json.dumps(expr)}\n    severity: error\n")
    return p


def test_at_least_15_cases() -> None:
    assert len(BAD) >= 15


@pytest.mark.parametrize("expr,needle", BAD, ids=[f"{i:02d}" for i in range(len(BAD))])
def test_compile_rejects(expr: str, needle: str) -> None:
    with pytest.raises(CheckSyntaxError) as info:
        compile_check(expr)
    assert needle in str(info.value)


@pytest.mark.parametrize("expr,needle", BAD, ids=[f"{i:02d}" for i in range(len(BAD))])
def test_load_spec_rejects_with_location(tmp_path: Path, expr: str, needle: str) -> None:
    with pytest.raises(SpecErrors) as info:
        load_spec(_spec(tmp_path, expr))
    text = info.value.render()
    assert "spec.yaml:6" in text and "checks.1.expr" in text and needle in text, text


@pytest.mark.parametrize("expr,needle", BAD[:16], ids=[f"{i:02d}" for i in range(16)])
def test_submit_dry_run_exits_2(orch, tmp_path: Path, expr: str, needle: str) -> None:
    res = orch("submit", "--dry-run", str(_spec(tmp_path, expr)), check=2)
    assert "Traceback" not in res.stderr
    assert "checks.1.expr" in res.stderr and needle in res.stderr, res.stderr
    assert not any(orch.results.iterdir())  # nothing was created


def test_good_checks_pass_validation(orch, tmp_path: Path) -> None:
    p = tmp_path / "good.yaml"
    p.write_text("name: chk\ntrain: {max_steps: 10}\nchecks:\n"
                 "  - val_ppl < 500\n  - best.val_loss < 1.95\n  - train_val_gap < 0.10\n"
                 "  - expr: effective_rank_ratio >= 0.8\n    severity: warn\n    message: representation collapse\n"
                 "  - 0.25 <= prediction_diversity <= 35\n  - abs(last.loss - best.val_loss) < 0.5 and not last.nonfinite\n")
    orch("submit", "--dry-run", str(p))
