"""What produced a run: command line, git commit and dirty diff, versions, host.

Secrets never land here (orchestrator/secrets.py decides what is one): of the environment
only a whitelist of reproducibility variables is kept, and of those any secret by name or by
value shape is dropped; the command line is masked (`--token X`, `--set env.X=...`,
token-shaped words), and the uncommitted diff has token shapes and quoted secret literals masked.
"""
from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from orchestrator.secrets import redact, redact_argv, secret_env

# Environment worth recording for reproducibility (everything else is noise or private).
KEEP_ENV = re.compile(r"^(SLURM_|CUDA_|NCCL_|OMP_|MKL_|PYTHON|TORCH|HF_HOME|HF_DATASETS_OFFLINE|HF_HUB_OFFLINE|TRANSFORMERS_|ACCELERATE_|ORCH_|CONDA_DEFAULT_ENV|VIRTUAL_ENV|PATH$|HOSTNAME$|USER$)")
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "numpy", "submitit", "pydantic", "orch")


def safe_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The reproducibility-relevant environment minus anything that could be a credential."""
    env = dict(os.environ if env is None else env)
    kept = {k: v for k, v in sorted(env.items()) if KEEP_ENV.match(k)}
    drop = set(secret_env(kept))
    return {k: v for k, v in kept.items() if k not in drop}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def git_info(cwd: Path) -> tuple[dict[str, Any], str]:
    """Commit, branch and dirty flag of the repo around `cwd`, plus the uncommitted diff."""
    top = _git(["rev-parse", "--show-toplevel"], cwd)
    if not top:
        return {"repo": None}, ""
    root = Path(top.strip())
    commit = (_git(["rev-parse", "HEAD"], root) or "").strip() or None
    branch = (_git(["rev-parse", "--abbrev-ref", "HEAD"], root) or "").strip() or None
    diff = _git(["diff", "HEAD", "--binary"], root) if commit else ""
    status = _git(["status", "--porcelain"], root) or ""
    return {"repo": str(root), "commit": commit, "branch": branch, "dirty": bool(status.strip())}, redact(diff or "", code=True)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def collect(spec_path: Path | None, argv: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """Provenance record for a submission and the git patch to store beside it."""
    cwd = Path(spec_path).resolve().parent if spec_path else Path.cwd()
    git, patch = git_info(cwd)
    record = {
        "command": redact_argv([os.path.basename(sys.argv[0]) if argv is None else "orch",
                                *(sys.argv[1:] if argv is None else argv)]),
        "cwd": os.getcwd(),
        "spec_file": str(Path(spec_path).resolve()) if spec_path else None,
        "git": git,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "packages": package_versions(),
        "env": safe_env(),
    }
    return record, patch
