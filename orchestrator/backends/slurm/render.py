"""Rendering sbatch scripts: orch's templates or the user's own, with every value shell-quoted.

Templates use `{{ name }}` placeholders and nothing else (no logic, no Jinja): Python builds
each value, quoted with `shlex.quote`, so a spec value like `$(touch pwned)` is inert text in
the script. An unknown placeholder is an error naming the known ones. Values that end up in
`#SBATCH` lines may not contain newlines (a newline would end the comment and run the rest).

Placeholders (documented for users in slurm_templates/README.md):
  sbatch_options   all `#SBATCH` lines (orch's, then the profile's and the spec's extras)
  setup            the profile's then the spec's `setup` lines (raw shell, by design)
  env              `export` lines: the spec's env, ORCH_RESULTS_ROOT
  jobwrap          the job wrapper command (`python -m orchestrator.job RUN_DIR --backend slurm`)
  node_command     multi-node: the per-node `accelerate launch` command under orch's node shim,
                   quoted for `bash -c`
  run_id, run_dir, job_name, workdir, results_root, python, nodes, procs_per_node,
  gpus_per_node, cpus_per_node, signal, signal_grace, time, mem_mb
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Optional

from orchestrator.spec.profile import ClusterProfile, umask_line
from orchestrator.errors import UserError
from orchestrator.spec.schema import Spec, format_slurm_time

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
BUILTIN = {1: "single_node.sh.tmpl", 2: "multi_node.sh.tmpl"}


@functools.lru_cache(maxsize=None)
def templates_dir() -> Path:
    """`$ORCH_SLURM_TEMPLATES`, else the installed `slurm_templates` package (package data)."""
    explicit = os.environ.get("ORCH_SLURM_TEMPLATES")
    if explicit:
        return Path(explicit)
    import slurm_templates

    return Path(slurm_templates.__file__).resolve().parent


def template_path(spec: Spec, profile: ClusterProfile) -> Path:
    """The spec's template, else the profile's, else orch's single- or multi-node one."""
    chosen = spec.resources.template or profile.template
    if chosen:
        return Path(os.path.expanduser(chosen))
    return templates_dir() / BUILTIN[1 if spec.resources.nodes == 1 else 2]


@functools.lru_cache(maxsize=16)
def _read(path: Path, _mtime_ns: int) -> str:
    """A template's text, read once per version of the file (a sweep renders it 1,000 times)."""
    return path.read_text(encoding="utf-8")


def fill(template: str, values: dict[str, str], source: str = "template") -> str:
    """Replace `{{ name }}` placeholders; an unknown name is a UserError listing the known."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise UserError(f"{source}: unknown placeholder {{{{ {key} }}}}",
                            hint="known placeholders: " + ", ".join(sorted(values)))
        return values[key]

    return PLACEHOLDER.sub(sub, template)


def _one_line(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise UserError(f"{what} must be a single line: {value!r}")
    return value


def sbatch_option(flag: str, value: object) -> str:
    """`#SBATCH --flag=value`, value quoted (sbatch strips the quotes, bash never sees it)."""
    return f"#SBATCH {flag}={shlex.quote(_one_line(str(value), flag))}"


def sbatch_lines(spec: Spec, profile: ClusterProfile, *, job_name: str, output: str,
                 dependency: Optional[str] = None, array: Optional[str] = None) -> list[str]:
    """Every `#SBATCH` line for one job (or one array of identical jobs)."""
    res = spec.resources
    procs = res.processes_per_node
    lines = [
        sbatch_option("--job-name", job_name),
        sbatch_option("--nodes", res.nodes),
        sbatch_option("--ntasks-per-node", 1),  # one job wrapper / one launcher per node
        sbatch_option("--cpus-per-task", res.cpus_per_task * procs),
        sbatch_option("--mem", f"{res.mem_mb}M"),
        sbatch_option("--time", format_slurm_time(res.time_seconds)),
        sbatch_option("--output", output),
        "#SBATCH --open-mode=append",  # a requeued attempt appends to the same log
        sbatch_option("--signal", f"B:{res.signal}@{res.signal_grace}"),
        "#SBATCH --requeue",
        "#SBATCH --kill-on-invalid-dep=yes",  # a pipeline stage whose input failed is cancelled, not stuck
    ]
    if res.gpus_per_node:
        lines.append(sbatch_option("--gres", f"gpu:{res.gpus_per_node}"))
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(res, key) or getattr(profile, key)
        if value:
            lines.append(sbatch_option(f"--{key}", value))
    if res.exclusive:
        lines.append("#SBATCH --exclusive")
    if array:
        lines.append(sbatch_option("--array", array))
    if dependency:
        lines.append(sbatch_option("--dependency", dependency))
    for extra in [*profile.sbatch, *res.sbatch]:
        extra = _one_line(extra.strip(), "an sbatch option")
        if not extra.startswith("-"):
            raise UserError(f"sbatch option {extra!r} must start with '-' (e.g. --gres=gpu:4)")
        lines.append(f"#SBATCH {extra}")
    return lines


def python_executable(profile: ClusterProfile) -> str:
    return profile.python or sys.executable


def node_command(spec: Spec, python: str, run_dir: str) -> str:
    """The per-node launcher for multi-node runs, quoted as one `bash -c` argument: `accelerate
    launch` under orch's node shim (slurm/node.py), which keeps the launcher alive through the
    warning signal and passes it on to every trainer process of its node."""
    res = spec.resources
    q = shlex.quote
    parts = [
        "exec", q(python), "-m", "orchestrator.backends.slurm.node", "--signal", q(res.signal), "--",
        q(python), "-m", "accelerate.commands.launch",
        "--num_machines", str(res.nodes),
        "--machine_rank", '"$SLURM_NODEID"',  # each task's own node index
        "--main_process_ip", '"$ORCH_MAIN_ADDR"',
        "--main_process_port", '"$ORCH_MAIN_PORT"',
        "--num_processes", str(res.nodes * res.processes_per_node),
        # accelerate's torchrun path; with no GPU visible torch falls back to CPU + gloo
        "--multi_gpu", "--dynamo_backend", "no",
        "-m", "trainers", q(run_dir),
    ]
    return q(" ".join(parts))


def render_job(spec: Spec, profile: ClusterProfile, *, run_id: str, run_dir: Path, results_root: Path,
               workdir: Path, dependency: Optional[str] = None) -> str:
    """The job script of one run (what `orch submit --dry-run` shows and job.sh holds)."""
    q = shlex.quote
    res = spec.resources
    python = python_executable(profile)
    run_dir_s = str(run_dir)
    path = template_path(spec, profile)
    try:
        template = _read(path, path.stat().st_mtime_ns)
    except OSError as exc:
        raise UserError(f"cannot read the sbatch template {path}: {exc.strerror}",
                        hint="resources.template (spec) or template (cluster profile) names it")
    env = umask_line(profile) + [f"export {k}={q(str(v))}" for k, v in spec.env.items()]
    env.append(f"export ORCH_RESULTS_ROOT={q(str(results_root))}")
    setup = [*profile.setup, *res.setup]
    values = {
        "sbatch_options": "\n".join(sbatch_lines(
            spec, profile, job_name=spec.name, output=str(run_dir / "logs" / "scheduler.log"),
            dependency=dependency)),
        "setup": "\n".join(setup) if setup else "# (none)",
        "env": "\n".join(env),
        "jobwrap": " ".join([q(python), "-m", "orchestrator.job", "--backend", "slurm", q(run_dir_s)]),
        "node_command": node_command(spec, python, run_dir_s),
        "run_id": q(run_id),
        "run_dir": q(run_dir_s),
        "job_name": q(spec.name),
        "workdir": q(str(workdir)),
        "results_root": q(str(results_root)),
        "python": q(python),
        "nodes": str(res.nodes),
        "procs_per_node": str(res.processes_per_node),
        "gpus_per_node": str(res.gpus_per_node),
        "cpus_per_node": str(res.cpus_per_task * res.processes_per_node),
        "signal": res.signal,
        "signal_grace": str(res.signal_grace),
        "time": format_slurm_time(res.time_seconds),
        "mem_mb": str(res.mem_mb),
    }
    return fill(template, values, str(path))


def render_array(first: Spec, profile: ClusterProfile, *, run_dirs: list[Path], array: str, output: str,
                 label: str, dependency: Optional[str] = None) -> str:
    """A dispatcher for one job array: task i runs the i-th run's own job.sh.

    The per-run job.sh stays the single source of truth (and what --dry-run shows); this
    script only picks the run folder, sends the task's output there and `exec`s job.sh, so
    the batch shell that `--signal=B:` targets becomes the job wrapper.
    """
    q = shlex.quote
    lines = ["#!/bin/bash", f"# orch job array: {_one_line(label, 'label')}, {len(run_dirs)} runs"]
    lines += sbatch_lines(first, profile, job_name=first.name, output=output, dependency=dependency, array=array)
    lines += ["set -eo pipefail", "ORCH_RUN_DIRS=("]
    lines += [f"  {q(str(d))}" for d in run_dirs]
    lines += [
        ")",
        'run_dir=${ORCH_RUN_DIRS[$SLURM_ARRAY_TASK_ID]}',
        'exec >>"$run_dir/logs/scheduler.log" 2>&1',
        'exec bash "$run_dir/job.sh"',
    ]
    return "\n".join(lines) + "\n"
