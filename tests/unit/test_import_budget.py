"""The control plane stays light: `orch status` must not pay for torch, pydantic, pandas or yaml."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "accelerate", "datasets", "pydantic", "pandas", "matplotlib", "yaml")


def loaded_after(argv: list[str], results: Path) -> set[str]:
    code = ("import json, sys\nfrom orchestrator.cli import main\n"
            f"rc = main({argv!r})\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"ORCH_RESULTS": str(results), "PATH": "/usr/bin:/bin"})
    return set(json.loads(res.stderr.strip().splitlines()[-1]))


def test_status_imports_no_heavy_module(tmp_path: Path) -> None:
    assert not loaded_after(["status", "--json"], tmp_path) & set(HEAVY)


def test_orchestrator_never_imports_torch(tmp_path: Path) -> None:
    """Every control-plane module imports without torch (trainers/ is the data plane)."""
    modules = sorted(p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
                     for p in (REPO / "orchestrator").rglob("*.py") if p.name != "__main__.py")
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print('torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_lm_arch_validation_imports_neither_torch_nor_transformers() -> None:
    """`model.arch` is checked against transformers' model types at submit by reading its table, not importing it."""
    code = ("import sys\nfrom trainers.lm.config import ModelSpec\n"
            "ModelSpec(arch='qwen2'); ModelSpec(arch='ttt')\n"
            "try:\n    ModelSpec(arch='qwen22')\nexcept ValueError as e:\n    assert \"did you mean 'qwen2'\" in str(e)\n"
            "print(sorted({'torch', 'transformers'} & {m.split('.')[0] for m in sys.modules}))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
