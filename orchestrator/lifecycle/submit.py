"""Turning resolved specs into run folders and backend submissions.

`plan()` makes the run folders (spec.yaml, run.json, provenance) for one or several spec files,
resolving `after:` against runs of the same submission first, then the results tree, and
resolves the hub assets the specs name on this side (`orchestrator.hub.cache`: checked, fetched
when the hub is reachable, else exit 2) so that jobs run offline against the shared cache;
`submit_plan()` hands each group (a sweep = one group) to its backend. `resubmit()` starts a
new attempt of an existing run from its own folder (resume, and monitor's retries).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from orchestrator.record import record
from orchestrator.record.record import current_job_id
from orchestrator.backends import SubmitGroup, SubmitItem, get_backend
from orchestrator.errors import UserError
from orchestrator.record.paths import RunPaths
from orchestrator.lifecycle.provenance import collect
from orchestrator.record.tree import ResultsRoot, Run, new_run_id
from orchestrator.hub import cache as hub
from orchestrator.hub.assets import Asset
from orchestrator.spec.profile import load_profile
from orchestrator.spec.registry import lookup
from orchestrator.spec.schema import Spec, load_spec, parse_duration, spec_from_run, spec_to_yaml


@dataclass
class PlannedGroup:
    backend: str
    group: SubmitGroup
    source: Optional[Path]
    deps: list[Run] = field(default_factory=list)


def _get(model: Any, key: str) -> Any:
    for part in key.split("."):
        model = getattr(model, part, None)
    return model


def _with(model: Any, key: str, value: Any) -> Any:
    """A copy of `model` with the dotted `key` set (each section on the way copied, not mutated)."""
    head, _, rest = key.partition(".")
    return model.model_copy(update={head: _with(getattr(model, head), rest, value) if rest else value})


def _is_written_as_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~"))


def _absolutize(spec: Spec, spec_dir: Path, overridden: set[str], origin: Path) -> Spec:
    """Make local paths absolute, since the job may run elsewhere; missing inputs are errors.

    Which keys are paths is the trainer's to say (`TrainerInfo.paths`: always local files, which
    must exist; `paths_or_ids`: a local path or a hub id); `resources.template` is the control
    plane's own. A path written in the spec file is relative to that file; one given with `--set`
    is relative to the current directory, as any command-line path is.
    """
    info = lookup(spec.trainer)
    hint = "a path in the spec is relative to the spec file; one given with --set, to the current directory"
    for key, must_exist in [(k, True) for k in info.paths] + [(k, False) for k in info.paths_or_ids] + \
            [("resources.template", False)]:
        value = _get(spec, key)
        if not isinstance(value, str) or not value:
            continue
        base = Path.cwd() if key in overridden else spec_dir
        candidate = (base / Path(value).expanduser()).resolve()
        if candidate.exists() or must_exist:
            spec = _with(spec, key, str(candidate))
        if not candidate.exists() and (must_exist or _is_written_as_path(value)):
            raise UserError(f"{origin}: {key}: {candidate} does not exist", hint=hint)
        if must_exist and candidate.is_dir():  # `paths` are files: the job would die on IsADirectoryError
            files = sorted(p.name for p in candidate.iterdir() if p.is_file())[:5]
            raise UserError(f"{origin}: {key}: {candidate} is a directory; {key} names a file",
                            hint="name the file in it" + (f": {', '.join(files)}" if files else ""))
        if must_exist and not os.access(candidate, os.R_OK):
            raise UserError(f"{origin}: {key}: {candidate} cannot be read (permission denied)",
                            hint="the job reads it as you: check its mode and its folders'")
    if not Path(spec.preserve.dest).is_absolute():  # an output folder: relative to where you submit, like results/
        spec = _with(spec, "preserve.dest", str((Path.cwd() / spec.preserve.dest).resolve()))
    return spec


def with_hub_env(spec: Spec, profile: Any) -> Spec:
    """The spec with the hub variables its job needs (`HF_HOME`, offline mode) in `env:`."""
    extra = hub.job_env(spec, profile)
    return _with(spec, "env", {**spec.env, **extra}) if extra else spec


def prefetch_command(spec_files: list[Path], overrides: list[str]) -> str:
    """The `orch prefetch` command line that fetches what these specs need."""
    import shlex

    return "orch prefetch " + shlex.join([*map(str, spec_files), *(w for o in overrides for w in ("--set", o))])


def _resolve_after(refs: list[str], root: ResultsRoot, made: dict[str, list[Run]]) -> list[Run]:
    deps: list[Run] = []
    for ref in refs:
        if ref in made:  # a spec earlier in this same submission
            deps.extend(made[ref])
            continue
        same_name = sorted((r for r in root.iter_runs() if r.name == ref), key=lambda r: r.run_id)
        if same_name:
            latest = same_name[-1]
            sweep = latest.record.get("sweep_id")
            deps.extend([r for r in same_name if sweep and r.record.get("sweep_id") == sweep] or [latest])
            continue
        deps.append(root.resolve(ref))
    return deps


def resolve_specs(spec_files: list[Path], overrides: list[str], backend: Optional[str]) -> list[tuple[Path, list[Any], list[Spec]]]:
    """Load and validate every spec file, then resolve each run's spec as its job will read it:
    local paths absolute, the hub variables (cache, offline mode) in `env:`. Nothing is written."""
    loaded = [(f, load_spec(f, overrides, backend)) for f in spec_files]
    overridden = {item.partition("=")[0].strip() for item in overrides}
    profile = load_profile()
    hub.use_profile_cache(profile)
    return [(f, resolved, [with_hub_env(_absolutize(r.spec, f.resolve().parent, overridden, f), profile)
                           for r in resolved]) for f, resolved in loaded]


def assets_of(specs: list[Spec], *, offline_only: bool = False) -> list[Asset]:
    """The hub assets of these runs, each once (`offline_only`: of runs whose nodes are offline)."""
    found: dict[tuple, Asset] = {}
    for spec in specs:
        if offline_only and spec.env.get("HF_HUB_OFFLINE") != "1":
            continue
        for asset in spec.assets():
            found.setdefault(asset.identity, asset)
    return list(found.values())


def plan(
    spec_files: list[Path],
    root: ResultsRoot,
    overrides: list[str],
    backend: Optional[str],
    *,
    dry_run: bool,
    argv: list[str],
) -> list[PlannedGroup]:
    """Validate every spec and resolve its hub assets first (nothing is created if any is bad or
    missing), then make run folders."""
    prepared = resolve_specs(spec_files, overrides, backend)
    if not dry_run:  # a run whose nodes are offline needs its assets in the cache now
        hub.ensure(assets_of([s for _, _, specs in prepared for s in specs], offline_only=True),
                   prefetch_command(spec_files, overrides))
    groups: list[PlannedGroup] = []
    made: dict[str, list[Run]] = {}
    provenance_cache: dict[Path, tuple[dict[str, Any], str]] = {}
    yaml_cache: dict[str, str] = {}
    for file, resolved, specs in prepared:
        first = resolved[0].spec
        sweep = resolved[0].sweep
        is_sweep = sweep is not None
        stamp = time.time()
        sweep_id = f"{first.name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(stamp))}-{secrets.token_hex(2)}" if is_sweep else None
        deps = _resolve_after(first.after, root, made) if first.after else []
        if not dry_run and file not in provenance_cache:
            provenance_cache[file] = collect(file, argv)
        items: list[SubmitItem] = []
        for r, spec in zip(resolved, specs):
            record = {
                "spec_file": str(file.resolve()),
                "sweep_id": sweep_id,
                "sweep_index": r.sweep_index,
                "sweep_point": r.sweep_point or None,
                "total_steps": spec.train.max_steps,
                "stall_after": parse_duration(spec.monitor.stall_after),
                "trainer": spec.trainer,
                "after": [{"run_id": d.run_id, "run_dir": str(d.paths.root.resolve())} for d in deps],
            }
            if dry_run:
                run = Run(root.run_paths(spec.name, new_run_id(spec.name, stamp)), {**record, "state": "PENDING"})
            else:
                prov, patch = provenance_cache[file]
                layout = RunPaths.FAST
                files = {layout["spec"]: spec_to_yaml(spec, yaml_cache),
                         layout["provenance"]: json.dumps(prov, indent=2, default=str) + "\n"}
                if patch:
                    files[layout["git_patch"]] = patch
                run = root.create_run(spec.name, record, files=files)
            items.append(SubmitItem(run, spec))
        made.setdefault(first.name, []).extend(i.run for i in items)
        limit = sweep.max_parallel if sweep else None
        group = SubmitGroup(items, max_parallel=limit, group_id=sweep_id or items[0].run.run_id)
        groups.append(PlannedGroup(first.backend, group, file, deps))
    return groups


def submit_plan(groups: list[PlannedGroup]) -> list[tuple[SubmitItem, str]]:
    """Submit each group; a dependency's job ids become afterok dependencies."""
    done: list[tuple[SubmitItem, str]] = []
    for pg in groups:
        backend = get_backend(pg.backend)
        pg.group.after_job_ids = [j for j in (current_job_id(d.reload()) for d in pg.deps) if j]
        ids = backend.submit(pg.group)
        done.extend(zip(pg.group.items, ids))
    return done


def resubmit(run: Run, reason: str = "resume", backend: Optional[str] = None, *, after_attempt: int) -> str:
    """A new attempt of a stopped run, from its folder alone; the trainer resumes from its checkpoint.

    The new attempt is opened by the record's `resubmit` transition, which succeeds only while
    `after_attempt` is still the run's current attempt: of two callers racing (`orch resume` and
    `orch monitor`), one submits and the other gets IllegalTransition and submits nothing.
    """
    rec = run.reload()
    spec = spec_from_run(run.paths.spec)
    name = backend or rec.get("backend") or spec.backend
    record.resubmit(run, name, after_attempt=after_attempt, reason=reason)
    with contextlib.suppress(FileNotFoundError):
        run.paths.cancel_request.unlink()
    group = SubmitGroup([SubmitItem(run, spec)], group_id=run.run_id)
    return get_backend(name).submit(group)[0]

