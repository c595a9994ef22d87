"""Files a team can read: a real job writes every file and folder with the mode the umask gives
(0644/0755 under 022, 0600/0700 under 077), and a cluster profile's `umask: "0002"` makes the
project folder group-writable (0664/0775) whatever the umask of the shell that submitted it.

The three runs are real tiny jobs on the local backend, submitted at once and waited for together;
every file and folder under each run folder is checked, hidden ones and checkpoints included.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, Orch

TINY = """\
name: {name}
model: {{arch: gpt2, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 32}}
data: {{builtin: arith}}
train: {{max_steps: 10, batch_size: 8, lr: 3.0e-3, warmup_steps: 2, log_every: 5}}
eval: {{every: 5, batches: 2}}
checkpoint: {{every: 5}}
"""

CASES = {  # name: (shell umask, profile umask, file mode, folder mode)
    "u022": (0o022, None, 0o644, 0o755),
    "u077": (0o077, None, 0o600, 0o700),
    "shared": (0o077, "0002", 0o664, 0o775),
}


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if not stat.S_ISLNK(st.st_mode):
                out[str(path.relative_to(root))] = stat.S_IMODE(st.st_mode) | (0o40000 if stat.S_ISDIR(st.st_mode) else 0)
    return out


def test_jobs_write_files_with_the_umask_or_the_profile_umask(orch: Orch, tmp_path: Path) -> None:
    procs = {}
    for name, (mask, profile, _, _) in CASES.items():
        config = tmp_path / f"config-{name}"
        (config / "orch").mkdir(parents=True)
        if profile:
            (config / "orch" / "cluster.yaml").write_text(f'umask: "{profile}"\n')
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(TINY.format(name=name))
        env = {k: v for k, v in orch.env.items() if k != "ORCH_CLUSTER"}
        env.update(XDG_CONFIG_HOME=str(config), ORCH_RESULTS=str(tmp_path / f"results-{name}"))
        procs[name] = subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", str(spec), "--wait", "--json"],
                                       cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       preexec_fn=lambda mask=mask: os.umask(mask))  # type: ignore[misc]
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {out}\n{err}"
        [row] = json.loads(out)
        run_dir = Path(row["run_dir"])
        _, profile, file_mode, dir_mode = CASES[name]
        modes = _modes(tmp_path / f"results-{name}")
        files = {p: m for p, m in modes.items() if not m & 0o40000}
        folders = {p: m & 0o777 for p, m in modes.items() if m & 0o40000}
        # what the job wrote: its record, logs, metrics, heartbeat, checkpoints (Accelerate state too)
        rel = str(run_dir.relative_to(tmp_path / f"results-{name}"))
        for expected in ("run.json", "heartbeat.json", "job.sh", "exit.json", "spec.yaml", "logs/stdout-1.log",
                         "eval/metrics_history.jsonl", "logs/train_diagnostics.jsonl"):
            assert f"{rel}/{expected}" in files, (name, expected, sorted(files))
        assert any("/ckpt/step-" in p and p.endswith("optimizer.bin") for p in files), sorted(files)
        wrong = {p: oct(m) for p, m in files.items() if m != file_mode}
        assert not wrong, f"{name}: files not {oct(file_mode)}: {wrong}"
        wrong = {p: oct(m) for p, m in folders.items() if m != dir_mode}
        assert not wrong, f"{name}: folders not {oct(dir_mode)}: {wrong}"
        assert ("umask 0002" in (run_dir / "job.sh").read_text()) == bool(profile)
