"""The run folder's layout, owned by one class (as submitit's JobPaths owns a job's files).

The run folder is the single source of truth about a run: a requeued job, a second `orch`
process or a cron job needs nothing else. Its layout matches the preserved-data bundles
researchers keep, so preserving is a verified copy.
"""
from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Optional

from orchestrator.errors import UserError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, what: str = "name") -> str:
    """Accept names that are safe as one path component and inside a shell word."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise UserError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' (at most 128, "
            "starting with a letter or digit, no '..')",
            hint="names become folder names and job names; shell metacharacters are not allowed",
        )
    return name


def default_results_root() -> Path:
    return Path(os.environ.get("ORCH_RESULTS", "results"))


class RunPaths:
    """Every file of one run, relative to its folder `results/<name>/<run_id>/`.

    `fast(key)` gives the hot files as plain strings: `orch status` over 10,000 runs spends
    more time building Path objects than reading files otherwise.
    """

    FAST = {
        "spec": "spec.yaml",
        "provenance": "provenance.json",
        "git_patch": "provenance.patch",
        "run_json": "run.json",
        "heartbeat": "heartbeat.json",
        "checks": "checks.json",
        "metrics_history": os.path.join("eval", "metrics_history.jsonl"),
        "diagnostics": os.path.join("logs", "train_diagnostics.jsonl"),
    }

    def __init__(self, root: Path | str, run_id: Optional[str] = None) -> None:
        self._root = os.fspath(root)
        # asked for constantly by status; `run_id`: the folder's name when the caller has it (a listing)
        self.run_id = run_id if run_id is not None else os.path.basename(self._root)

    @cached_property
    def root(self) -> Path:
        return Path(self._root)

    @property
    def dir(self) -> str:
        """The run folder as a plain string."""
        return self._root

    def fast(self, key: str) -> str:
        return os.path.join(self._root, self.FAST[key])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunPaths) and other._root == self._root

    def __hash__(self) -> int:
        return hash(self._root)

    def __repr__(self) -> str:
        return f"RunPaths({self._root!r})"

    # -- identity and state ------------------------------------------------------------
    @property
    def group(self) -> str:
        """The experiment name: the folder above the run."""
        return os.path.basename(os.path.dirname(self._root))

    @property
    def spec(self) -> Path:
        return Path(self.fast("spec"))  # fully resolved spec

    @property
    def run_json(self) -> Path:
        return Path(self.fast("run_json"))  # state, attempts, exit codes, stop reason

    @property
    def provenance(self) -> Path:
        return Path(self.fast("provenance"))

    @property
    def git_patch(self) -> Path:
        return Path(self.fast("git_patch"))  # uncommitted diff at submit time

    @property
    def heartbeat(self) -> Path:
        return Path(self.fast("heartbeat"))  # refreshed by the job while it runs

    @property
    def cancel_request(self) -> Path:
        return self.root / ".cancel-requested"  # tells the job wrapper a stop is a cancel

    @property
    def exit_status(self) -> Path:
        return self.root / "exit.json"  # renamed into place when an attempt ends

    @property
    def checks(self) -> Path:
        return Path(self.fast("checks"))

    @property
    def job_script(self) -> Path:
        return self.root / "job.sh"  # the rendered backend script

    # -- logs -----------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def training_log(self) -> Path:
        return self.logs / "training.log"

    @property
    def diagnostics(self) -> Path:
        return Path(self.fast("diagnostics"))

    def stdout(self, attempt: int) -> Path:
        return self.logs / f"stdout-{attempt}.log"

    def stderr(self, attempt: int) -> Path:
        return self.logs / f"stderr-{attempt}.log"

    def environment(self, attempt: int) -> Path:
        """The job side's environment of an attempt (reproducibility variables only, no secrets)."""
        return self.logs / f"environment-{attempt}.json"

    @property
    def scheduler_log(self) -> Path:
        return self.logs / "scheduler.log"  # the batch system's own output (sbatch --output)

    # -- evaluation -----------------------------------------------------------------------
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def metrics_history(self) -> Path:
        return Path(self.fast("metrics_history"))

    @property
    def metrics(self) -> Path:
        return self.eval / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.eval / "predictions.jsonl"

    @property
    def samples(self) -> Path:
        return self.eval / "samples.jsonl"

    # -- checkpoints and artefacts --------------------------------------------------------
    @property
    def ckpt(self) -> Path:
        return self.root / "ckpt"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def make_dirs(self) -> None:
        for d in (self.root, self.logs, self.eval, self.ckpt):
            d.mkdir(parents=True, exist_ok=True)


def inside(root: Path, candidate: Path) -> bool:
    """True when `candidate` resolves to a path under `root` (nothing escapes the results root)."""
    try:
        candidate.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False
