"""Shell completion for real: the generated script is sourced by bash, and its function is called
the way bash calls it on TAB (COMP_WORDS, COMP_CWORD), then COMPREPLY is read back."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Orch

BASH = shutil.which("bash")


@pytest.fixture
def script(orch: Orch, tmp_path: Path) -> Path:
    for name, ids in {"quickstart": ["quickstart-20250314-101500-0a1b", "quickstart-20250315-090000-77cd"],
                      "sweepy": ["sweepy-20250314-101500-0000"]}.items():
        for rid in ids:
            (orch.results / name / rid).mkdir(parents=True)
    (orch.results / ".hidden").mkdir()
    path = tmp_path / "orch.bash"
    path.write_text(orch("completion", "bash").stdout)
    return path


def complete(script: Path, line: str, env: dict[str, str], cwd: Path) -> list[str]:
    """What TAB offers at the end of `line` (a trailing space starts a new, empty word)."""
    words = line.split()
    if line.endswith(" "):
        words.append("")
    array = " ".join(f"'{w}'" for w in words)
    prog = (f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; "
            f"COMP_LINE='{line}'; COMP_POINT={len(line)}; _orch; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    res = subprocess.run([BASH, "--norc", "--noprofile", "-c", prog], capture_output=True, text=True,
                         env=env, cwd=cwd, timeout=30)
    assert res.returncode == 0 and not res.stderr, res.stderr
    return sorted(w for w in res.stdout.splitlines() if w)


@pytest.mark.skipif(BASH is None, reason="bash is absent")
def test_bash_completes_commands_flags_values_and_runs(orch: Orch, script: Path, tmp_path: Path) -> None:
    env = dict(orch.env)
    cwd = tmp_path

    def offers(line: str) -> list[str]:
        return complete(script, line, env, cwd)

    assert offers("orch st") == ["status"]
    assert offers("orch c") == ["cancel", "check", "compare", "completion"]
    assert offers("orch --res") == ["--results"]
    assert offers("orch status --wh") == ["--where"]
    assert offers("orch status --w") == ["--watch", "--where", "--wide"]
    assert offers("orch status --state C") == ["CANCELLED", "COMPLETED"]
    assert offers("orch status --sort v") == ["val"]
    assert offers("orch submit --backend ") == ["local", "slurm"]
    assert offers("orch completion ") == ["bash", "zsh"]
    # run ids and names from the results tree ($ORCH_RESULTS), hidden folders left out
    assert offers("orch logs quick") == ["quickstart", "quickstart-20250314-101500-0a1b", "quickstart-20250315-090000-77cd"]
    assert offers("orch status quickstart-2025031") == ["quickstart-20250314-101500-0a1b", "quickstart-20250315-090000-77cd"]
    assert offers("orch status --name s") == ["sweepy"]
    assert "sweepy-20250314-101500-0000" in offers("orch cancel ")
    assert not any(w.startswith(".") for w in offers("orch cancel "))
    # --results on the line wins over $ORCH_RESULTS
    other = tmp_path / "elsewhere"
    (other / "mine" / "mine-20250101-000000-abcd").mkdir(parents=True)
    assert offers(f"orch --results {other} status m") == ["mine", "mine-20250101-000000-abcd"]
    # a spec file for submit: bash's own file names (-o default), nothing from orch
    assert offers("orch submit ") == []


def test_zsh_script_wraps_the_bash_function(orch: Orch) -> None:
    text = orch("completion", "zsh").stdout
    assert "bashcompinit" in text and "complete -o default -F _orch orch" in text
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is absent: the script was checked as text only")
    res = subprocess.run([zsh, "-f", "-c", f"{text}\nprint -r -- ${{_comps[orch]}}"], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0 and "_bash_complete" in res.stdout, res.stdout + res.stderr
