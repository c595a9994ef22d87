"""The experiment spec pipeline: YAML in, one validated spec per run out.

Pipeline: load YAML (with line numbers) -> resolve `extends` (deep merge, relative to the file)
-> pick the schema of the spec's `trainer:` (the registry's; its default trainer when the key is
absent) -> apply `--set` overrides -> expand the sweep (one resolved spec per point) -> validate
each point with pydantic. Every problem becomes a `SpecError` naming file:line, the key path,
what was expected and a hint ("did you mean 'lr'?"). Unknown keys are errors, never ignored.
"""
from __future__ import annotations

import copy
import difflib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from orchestrator.errors import SpecError, SpecErrors
from orchestrator.spec.registry import UnknownTrainer, default_name, lookup
from orchestrator.spec.sections import Spec, SweepSpec
from orchestrator.spec.yamlpos import LineMap, compose_bounded, load_yaml, parse_scalar, read_spec_text


@dataclass
class ResolvedSpec:
    """One validated run spec plus where it came from."""

    spec: Spec  # one run: its `sweep` section is dropped (the point's values are applied)
    data: dict[str, Any]
    source: Optional[Path]
    sweep_point: dict[str, Any] = field(default_factory=dict)
    sweep_index: Optional[int] = None
    sweep: Optional[SweepSpec] = None  # the sweep this point belongs to, validated once


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_with_extends(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], LineMap]:
    path = path.resolve() if path.is_absolute() else path
    key = path.resolve()
    if key in chain:
        names = " -> ".join(str(p) for p in chain + (key,))
        raise SpecError(f"'extends' forms a cycle: {names}", file=str(path))
    data, lines = load_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data, lines
    parents = parent if isinstance(parent, list) else [parent]
    merged: dict[str, Any] = {}
    merged_lines: LineMap = {}
    for p in parents:
        if not isinstance(p, str):
            file, line = lines.get(("extends",), (str(path), 0))
            raise SpecError("expected a file name (or a list of them)", file=file, line=line, key="extends")
        ppath = (path.parent / p)
        if not ppath.exists():
            file, line = lines.get(("extends",), (str(path), 0))
            raise SpecError(f"file {p!r} not found (relative to {path.parent})", file=file, line=line, key="extends")
        pdata, plines = _load_with_extends(ppath, chain + (key,))
        merged = deep_merge(merged, pdata)
        merged_lines.update(plines)
    merged = deep_merge(merged, data)
    merged_lines.update(lines)
    return merged, merged_lines


def _schema_at(model: Any, loc: tuple[Any, ...]) -> Any:
    """The pydantic model class (or None for free-form dicts) found by walking `loc`."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = _model_in(info.annotation)
    return current


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside `Optional[X]`, `Union[str, X]`, `list[X]` (first found), else the type."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


# Names researchers bring from nanoGPT, HF and Slurm, mapped to ours.
SYNONYMS = {
    "learning_rate": "lr", "max_lr": "lr", "lr_min": "min_lr", "max_iters": "max_steps", "iters": "max_steps",
    "steps": "max_steps", "n_embd": "d_model", "hidden_size": "d_model", "n_embed": "d_model",
    "num_layers": "n_layer", "n_layers": "n_layer", "num_heads": "n_head", "n_heads": "n_head",
    "block_size": "max_seq_len", "seq_len": "max_seq_len", "context_length": "max_seq_len",
    "intermediate_size": "d_ff", "gradient_accumulation_steps": "grad_accum", "warmup_iters": "warmup_steps",
    "eval_interval": "every", "eval_iters": "batches", "log_interval": "log_every", "mixed_precision": "precision",
    "dtype": "precision", "gpus": "gpus_per_node", "time_limit": "time", "memory": "mem",
}


def _did_you_mean(model: Any, key: str) -> Optional[str]:
    """A suggestion for a misspelt key: close spellings first, then known synonyms."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    fields = list(model.model_fields)
    close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
    if not close:
        near = difflib.get_close_matches(str(key), list(SYNONYMS), n=1, cutoff=0.75)
        if near and SYNONYMS[near[0]] in fields:
            close = [SYNONYMS[near[0]]]
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(fields)


def _unknown_key(hint: Optional[str]) -> tuple[str, Optional[str]]:
    """('unknown key; did you mean ...', None) or ('unknown key', 'known keys: ...')."""
    if hint and hint.startswith("did you mean"):
        return f"unknown key; {hint}", None
    return "unknown key", hint


def check_key_path(path: str, origin: str, schema: type[Spec] = Spec) -> None:
    """Raise if a dotted key path (from --set or a sweep) names no field of the schema."""
    parts = path.split(".")
    if not all(parts):
        raise SpecError(f"{path!r} is not a key path like train.lr", file=origin)
    current: Any = schema
    for i, part in enumerate(parts):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return  # inside a free-form dict (env, loss, config, sweep grid): anything goes
        if part not in current.model_fields:
            msg, hint = _unknown_key(_did_you_mean(current, part))
            raise SpecError(msg, file=origin, key=".".join(parts[: i + 1]), hint=hint)
        current = _model_in(current.model_fields[part].annotation)


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def parse_overrides(items: list[str], schema: type[Spec] = Spec) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected key.path=value, e.g. --set train.lr=3e-4", file="--set")
        key = key.strip()
        check_key_path(key, "--set", schema)
        out.append((key, parse_scalar(raw)))
    return out


# Numbers beyond these are typos or hostile input (a 40-digit max_steps, lr=.inf): no field of a
# spec means them, and they overflow the C types torch and Slurm use (an int64 count, a float32).
MAX_INT = 2**53
MAX_FLOAT = 3.4e38
MAX_SWEEP_POINTS = 10_000


def check_numbers(value: Any, loc: tuple[Any, ...], lines: LineMap, file: str) -> None:
    """Reject NaN, infinities and absurd magnitudes anywhere in the spec, naming file:line."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_numbers(v, loc + (k,), lines, file)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_numbers(v, loc + (i,), lines, file)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        problem = None
        if isinstance(value, float) and value != value:
            problem = "NaN is not a value a spec can use"
        elif isinstance(value, float) and value in (float("inf"), float("-inf")):
            problem = "an infinite number is not a value a spec can use"
        elif isinstance(value, int) and abs(value) >= MAX_INT:
            problem = f"a {len(str(abs(value)))}-digit number is beyond any meaningful setting (limit 2**53)"
        elif isinstance(value, float) and abs(value) > MAX_FLOAT:
            problem = f"{value:g} is beyond any meaningful setting (limit {MAX_FLOAT:g})"
        if problem:
            f, line = file, None
            for n in range(len(loc), -1, -1):
                if loc[:n] in lines:
                    f, line = lines[loc[:n]]
                    break
            raise SpecError(problem, file=f, line=line or None, key=".".join(map(str, loc)) or None,
                            hint="check for a typo (an extra digit, .inf, .nan)")


def check_metric_names(spec: Spec, lines: LineMap, file: str) -> None:
    """A `checks:` expression naming a metric the trainer never reports (`val_los`) is an error at
    submit, with a did-you-mean, instead of an UNKNOWN verdict after the run."""
    from orchestrator.checks.expr import compile_check

    info = lookup(spec.trainer)
    declared = tuple(spec.metrics.direction) if getattr(spec, "metrics", None) is not None else ()
    errors = []
    for i, check in enumerate(spec.checks):
        for name in compile_check(check.expr).names:
            hint = info.metric_problem(name, declared)
            if hint is not None:
                f, line = lines.get(("checks", i, "expr"), lines.get(("checks", i), (file, None)))
                errors.append(SpecError(f"{name!r} is not a metric trainer {info.name!r} reports", file=f,
                                        line=line, key=f"checks.{i}", hint=hint))
    if errors:
        raise SpecErrors(errors)


def _expand_sweep(data: dict[str, Any], lines: LineMap, file: str, schema: type[Spec] = Spec) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    sweep = data.get("sweep")
    if not sweep:
        return [({}, data)]
    if not isinstance(sweep, dict):
        f, line = lines.get(("sweep",), (file, 0))
        raise SpecError("expected a mapping with grid: and/or list:", file=f, line=line, key="sweep")
    points: list[dict[str, Any]] = [{}]
    grid = sweep.get("grid") or {}
    if not isinstance(grid, dict):
        f, line = lines.get(("sweep", "grid"), (file, 0))
        raise SpecError("expected a mapping of key paths to lists of values", file=f, line=line, key="sweep.grid")
    for key, values in grid.items():
        f, line = lines.get(("sweep", "grid", key), (file, 0))
        try:
            check_key_path(str(key), f, schema)
        except SpecError as exc:
            msg = exc.message.split(": ", 1)[-1]
            raise SpecError(f"sweep key {key!r}: {msg}", file=f, line=line, key="sweep.grid", hint=exc.hint)
        if key in ("name", "sweep") or str(key).startswith("sweep."):
            raise SpecError(f"cannot sweep over {key!r}", file=f, line=line, key="sweep.grid")
        if not isinstance(values, list) or not values:
            raise SpecError(f"expected a non-empty list of values for {key!r}", file=f, line=line, key=f"sweep.grid.{key}")
    listed_n = len(sweep.get("list") or []) if isinstance(sweep.get("list") or [], list) else 0
    total = 1
    for values in grid.values():
        total *= len(values)
    total = total * max(listed_n, 1) if grid else listed_n
    if total > MAX_SWEEP_POINTS:
        f, line = lines.get(("sweep",), (file, 0))
        sizes = " x ".join(str(len(v)) for v in grid.values()) + (f" x {listed_n} list entries" if grid and listed_n else "")
        raise SpecError(f"the sweep has {total:,} points ({sizes}); at most {MAX_SWEEP_POINTS:,} are allowed",
                        file=f, line=line, key="sweep",
                        hint="split it into several specs, or narrow the grid")
    if grid:
        keys = list(grid)
        points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    listed = sweep.get("list") or []
    if not isinstance(listed, list):
        f, line = lines.get(("sweep", "list"), (file, 0))
        raise SpecError("expected a list of override mappings", file=f, line=line, key="sweep.list")
    if listed:
        extra = []
        for i, item in enumerate(listed):
            f, line = lines.get(("sweep", "list", i), (file, 0))
            if not isinstance(item, dict) or not item:
                raise SpecError("expected a mapping of key paths to values", file=f, line=line, key=f"sweep.list[{i}]")
            for key in item:
                try:
                    check_key_path(str(key), f, schema)
                except SpecError as exc:
                    msg = exc.message.split(": ", 1)[-1]
                    raise SpecError(f"sweep key {key!r}: {msg}", file=f, line=line, key=f"sweep.list[{i}]", hint=exc.hint)
            extra.append(item)
        points = [{**g, **e} for g in points for e in extra] if grid else extra
    out = []
    without_sweep = {k: v for k, v in data.items() if k != "sweep"}
    for point in points:
        d = copy.deepcopy(without_sweep)  # a 1,000-point grid is not copied into every point
        for key, value in point.items():
            set_path(d, str(key), copy.deepcopy(value))
        out.append((point, d))
    return out


def _to_spec_errors(exc: ValidationError, lines: LineMap, file: str, prefix: str = "", schema: type[Spec] = Spec) -> SpecErrors:
    errors = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "list", "dict"))))
        # pydantic adds union-branch tags like 'CheckSpec' or 'function-after[...]': keep real keys
        loc = tuple(p for p in loc if not (isinstance(p, str) and p[:1].isupper() and p not in lines_keys(lines)))
        key = ".".join(str(p) for p in loc) or None
        f, line = file, None
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                f, line = lines[loc[:n]]
                break
        hint = None
        if err["type"] == "extra_forbidden":
            msg, hint = _unknown_key(_did_you_mean(_schema_at(schema, loc[:-1]), str(loc[-1]) if loc else ""))
        elif err["type"] == "missing":
            msg = "required key is missing"
            hint = f"add '{loc[-1]}:' to the spec" if loc else None
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            if err["type"] not in ("value_error", "assertion_error") and not isinstance(got, (dict, list)):
                msg += f" (got {got!r})"
        errors.append(SpecError(prefix + msg, file=f, line=line, key=key, hint=hint))
    return SpecErrors(errors)


def lines_keys(lines: LineMap) -> set[Any]:
    return {part for loc in lines for part in loc}


def load_spec(
    path: Path | str,
    overrides: list[str] | None = None,
    backend: Optional[str] = None,
) -> list[ResolvedSpec]:
    """Load a spec file into one validated spec per run (one, or one per sweep point)."""
    path = Path(path)
    data, lines = _load_with_extends(path)
    file = str(path)
    chosen = dict(parse_overrides([o for o in overrides or [] if o.partition("=")[0].strip() == "trainer"]))
    if "trainer" in chosen:
        data["trainer"] = chosen["trainer"]
        lines[("trainer",)] = ("--set", 0)
    schema = _schema_for(data, lines, file)
    for key, value in parse_overrides(overrides or [], schema):
        set_path(data, key, value)
        lines[tuple(key.split("."))] = ("--set", 0)
    if backend is not None:
        data["backend"] = backend
    check_numbers(data, (), lines, file)

    def validate(d: dict[str, Any], prefix: str = "", changed: Optional[list[str]] = None) -> Spec:
        """`changed`: the key paths a sweep point sets; only those can hold new numbers."""
        try:
            spec = schema.model_validate(d)
        except ValidationError as exc:
            raise _to_spec_errors(exc, lines, file, prefix, schema)
        dumped = spec.model_dump(exclude_none=True)  # strings pydantic read as numbers ("1e300")
        for key in changed if changed is not None else [""]:
            loc = tuple(key.split(".")) if key else ()
            node: Any = dumped
            for part in loc:
                node = node.get(part) if isinstance(node, dict) else None
            check_numbers(node, loc, lines, file)
        return spec

    # Validate the base once: errors in the file are reported once, not once per sweep point.
    base = {k: v for k, v in data.items() if k != "sweep"}
    check_metric_names(validate({**base, "sweep": None}), lines, file)
    points = _expand_sweep(data, lines, file, schema)  # structural sweep errors, with their lines
    sweep = validate({**base, "sweep": data["sweep"]}).sweep if data.get("sweep") is not None else None
    resolved = []
    for index, (point, d) in enumerate(points):
        label = ", ".join(f"{k}={v!r}" for k, v in point.items())
        spec = validate(d, prefix=f"sweep point {index} ({label}): " if point else "",
                        changed=[str(k) for k in point] if point else None)
        resolved.append(ResolvedSpec(spec, d, path, point, index if sweep else None, sweep))
    return resolved


_HEAD = ("name", "trainer", "description", "backend", "seed", "tags")


def spec_to_yaml(spec: Spec, cache: Optional[dict[str, str]] = None) -> str:
    """The fully resolved spec (defaults filled in), as written to the run folder.

    A top-level mapping's YAML is the concatenation of its keys' YAML, so with a `cache` shared
    across the points of a sweep each distinct section is dumped once (1,000 points differ in
    one or two sections; the rest is shared).
    """
    import json

    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    dumped = spec.model_dump(mode="json")
    own = [k for k in dumped if k not in Spec.model_fields]  # the trainer's sections: after who/what, before the rest
    order = [k for k in _HEAD if k in dumped] + own + [k for k in dumped if k not in _HEAD and k not in own]
    parts = []
    for key, value in ((k, dumped[k]) for k in order):
        memo = f"{key}\0{json.dumps(value, sort_keys=True)}" if cache is not None else None
        text = cache.get(memo) if cache is not None and memo is not None else None
        if text is None:
            text = yaml.dump({key: value}, Dumper=dumper, sort_keys=False)
            if cache is not None and memo is not None:
                cache[memo] = text
        parts.append(text)
    return "".join(parts)


def _schema_for(data: dict[str, Any], lines: LineMap, file: str) -> type[Spec]:
    """The schema of the spec's trainer (the registry's default when `trainer:` is absent: filled in)."""
    f, line = lines.get(("trainer",), (file, None))
    try:
        if data.get("trainer") is None:
            data["trainer"] = default_name()
        return lookup(data["trainer"]).spec_class
    except UnknownTrainer as exc:
        raise SpecError(exc.message, file=f, line=line, key="trainer", hint=exc.hint) from None


def spec_from_data(data: dict[str, Any], origin: str) -> Spec:
    """Validate a resolved spec (a mapping) with its trainer's schema; errors name `origin`."""
    data = dict(data)
    schema = _schema_for(data, {}, origin)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise _to_spec_errors(exc, {}, origin, schema=schema)


def spec_from_run(spec_path: Path) -> Spec:
    """Re-read a run folder's resolved spec.yaml, validated with its trainer's schema."""
    data = compose_bounded(read_spec_text(spec_path), str(spec_path))[0] or {}
    if not isinstance(data, dict):
        raise SpecError("expected a mapping of spec sections", file=str(spec_path))
    return spec_from_data(data, str(spec_path))
