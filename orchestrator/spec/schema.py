"""The experiment spec: YAML in, validated and typed model out.

Pipeline: load YAML (with line numbers) -> resolve `extends` (deep merge, relative to the file)
-> apply `--set` overrides -> expand the sweep (one resolved spec per point) -> validate each
point with pydantic. Every problem becomes a `SpecError` naming file:line, the key path, what
was expected and a hint ("did you mean 'lr'?"). Unknown keys are errors, never ignored.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import SpecError, SpecErrors
from orchestrator.spec.yamlpos import LineMap, load_yaml, parse_scalar

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TRAINER_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
BUILTIN_TRAINERS = ("lm", "latentwire")


# ------------------------------------------------------------------------------ helpers
def parse_duration(value: Union[str, int, float]) -> float:
    """Seconds from `3600`, `"01:00:00"`, `"2-00:00:00"`, `"90m"`, `"12h"`, `"30s"`, `"1d"`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected seconds or a duration like '01:30:00', '90m', '12h'")
    text = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if m:
        return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?", text)
    if m and text:
        days = int(m.group(1) or 0)
        parts = [int(p) for p in m.group(2, 3, 4) if p is not None]
        if len(parts) == 1:  # Slurm: "MM" alone means minutes
            h, mi, s = 0, parts[0], 0
        elif len(parts) == 2:  # Slurm: "MM:SS", or "D-HH:MM"
            h, mi, s = (parts[0], parts[1], 0) if m.group(1) else (0, parts[0], parts[1])
        else:
            h, mi, s = parts
        return float(days * 86400 + h * 3600 + mi * 60 + s)
    raise ValueError(f"cannot read {value!r} as a duration: use '01:30:00', 'D-HH:MM:SS', '90m', '12h' or seconds")


def format_slurm_time(seconds: float) -> str:
    """Seconds -> Slurm's `D-HH:MM:SS`."""
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def parse_mem(value: Union[str, int]) -> int:
    """Megabytes from `8G`, `8000M`, `8000`, `1T` (Slurm's units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(value), re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read {value!r} as memory: use e.g. '8G', '500M', '1T'")
    num, unit = float(m.group(1)), m.group(2).upper() or "M"
    return int(num * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit])


def _valid_duration(v: Any) -> Any:
    parse_duration(v)
    return v


def _valid_mem(v: Any) -> Any:
    parse_mem(v)
    return v


# Kept as written (Slurm takes the user's own notation), but checked at load time.
Duration = Annotated[Union[float, str], AfterValidator(_valid_duration)]
SlurmTime = Annotated[Union[str, int], AfterValidator(_valid_duration)]
Memory = Annotated[Union[str, int], AfterValidator(_valid_mem)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ------------------------------------------------------------------------------ sections
class ModelSpec(Section):
    """A GPT-style model built from a transformers config."""

    arch: Literal["gpt2", "llama", "mistral"] = "gpt2"
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: Optional[int] = Field(None, ge=1)
    d_model: int = Field(128, ge=1)
    d_ff: Optional[int] = Field(None, ge=1, description="default 4 * d_model")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_seq_len: int = Field(64, ge=2, description="the training window (block size)")
    sliding_window: Optional[int] = Field(None, ge=1, description="mistral only: sliding-window attention")
    tie_embeddings: bool = True
    init_from: Optional[str] = Field(None, description="start from a pretrained model (path or hub id)")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSpec":
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.sliding_window and self.arch != "mistral":
            raise ValueError("sliding_window needs arch: mistral")
        return self


class TokenizerSpec(Section):
    type: Literal["char", "bpe", "pretrained"] = "char"
    vocab_size: int = Field(50257, ge=16, description="bpe: size of the trained vocabulary")
    name_or_path: Optional[str] = Field(None, description="pretrained: local path or hub id")
    add_eos: bool = False

    @model_validator(mode="after")
    def _pretrained_needs_name(self) -> "TokenizerSpec":
        if self.type == "pretrained" and not self.name_or_path:
            raise ValueError("type: pretrained needs name_or_path (a local path or a hub id)")
        return self


class DataSpec(Section):
    path: Optional[str] = Field(None, description="local text/json/jsonl/parquet file, relative to the spec")
    hub: Optional[str] = Field(None, description="a Hugging Face dataset id, e.g. wikitext")
    config: Optional[str] = Field(None, description="the hub dataset's config, e.g. wikitext-2-raw-v1")
    builtin: Optional[str] = Field(None, description="a corpus shipped with orch (quickstart)")
    text_field: str = "text"
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    # SQuAD-style data (latentwire)
    train_samples: Optional[int] = Field(None, ge=1)
    eval_samples: Optional[int] = Field(None, ge=1)
    keep_unanswerable: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        given = [k for k in ("path", "hub", "builtin") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one data source: path (a local file), hub (a dataset id) or builtin"
                + (f"; got {', '.join(given)}" if given else "")
            )
        return self


# accelerate.utils.LoggerType's values (kept here: the control plane does not import accelerate/torch)
TRACKERS = ("all", "aim", "tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "swanlab")


class TrainSpec(Section):
    max_steps: Optional[int] = Field(None, ge=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    epochs: Optional[float] = Field(None, gt=0)
    max_time: Optional[Duration] = Field(None, description="wall-clock training budget over all attempts")
    batch_size: int = Field(12, ge=1, description="per-process micro-batch")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1.0e-3, gt=0)
    min_lr: float = Field(1.0e-4, ge=0)
    warmup_steps: Optional[int] = Field(None, ge=0)
    warmup_fraction: Optional[float] = Field(None, ge=0, le=1)
    decay_steps: Optional[int] = Field(None, ge=1, description="default: the step budget")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.99, gt=0, lt=1)
    grad_clip: Optional[float] = Field(1.0, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    log_every: int = Field(10, ge=1)
    max_nonfinite_logs: int = Field(3, ge=0, description="stop as diverged after this many NaN/inf log steps in a row (0: never)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trackers: list[str] = Field(default_factory=list, description="live logging through Accelerate's trackers "
                                "(tensorboard, wandb, mlflow, ...), into RUN/tracking")

    @field_validator("trackers")
    @classmethod
    def _trackers(cls, v: list[str]) -> list[str]:
        unknown = [t for t in v if t not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker {unknown[0]!r}: Accelerate knows {', '.join(TRACKERS)}")
        return v

    @model_validator(mode="after")
    def _budget(self) -> "TrainSpec":
        if not any((self.max_steps, self.max_tokens, self.epochs, self.max_time)):
            raise ValueError("set a budget: max_steps, max_tokens, epochs or max_time (whichever ends first)")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is larger than lr ({self.lr})")
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            raise ValueError("give warmup_steps or warmup_fraction, not both")
        return self

    @property
    def max_time_seconds(self) -> Optional[float]:
        return parse_duration(self.max_time) if self.max_time is not None else None


class EvalSpec(Section):
    every: int = Field(250, ge=1)
    batches: int = Field(20, ge=1)
    batch_size: Optional[int] = Field(None, ge=1, description="default: train.batch_size")
    at_end: bool = True
    length_multiples: list[int] = Field(default_factory=list, description="perplexity at k x the window")
    effective_rank: bool = False
    diversity: bool = True
    prompts: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(200, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_k: Optional[int] = Field(200, ge=1)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    modes: list[str] = Field(default_factory=list, description="latentwire: evaluation modes")

    @field_validator("length_multiples")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v):
            raise ValueError("length multiples must be >= 1")
        return v


class CheckpointSpec(Section):
    every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    keep_best: bool = True
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    hf_format: bool = True


class EarlyStoppingSpec(Section):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(10, ge=1, description="evaluations without improvement")
    min_delta: float = Field(0.0, ge=0)


class CheckSpec(Section):
    expr: str
    severity: Literal["error", "warn"] = "error"
    message: Optional[str] = None

    @field_validator("expr")
    @classmethod
    def _parses(cls, v: str) -> str:
        from orchestrator.checks.expr import compile_check  # the safe evaluator, no Python eval

        compile_check(v)
        return v


class ResourcesSpec(Section):
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    procs_per_node: Optional[int] = Field(None, ge=1, description="processes per node; default gpus or 1")
    cpus_per_task: int = Field(2, ge=1)
    mem: Memory = "8G"
    time: SlurmTime = "01:00:00"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    exclusive: bool = False
    sbatch: list[str] = Field(default_factory=list, description="extra #SBATCH options, e.g. --gres=gpu:4")
    setup: list[str] = Field(default_factory=list, description="shell lines run before the job (module load ...)")
    template: Optional[str] = Field(None, description="your own sbatch template")
    signal: str = Field("USR1", description="warning signal before the time limit")
    signal_grace: int = Field(60, ge=1, description="seconds between the signal and the limit")

    @field_validator("signal")
    @classmethod
    def _signal(cls, v: str) -> str:
        name = v.upper().removeprefix("SIG")
        if name not in {"USR1", "USR2", "TERM", "INT", "HUP", "URG", "CONT"}:
            raise ValueError(f"unsupported signal {v!r}: use USR1, USR2, TERM, INT or HUP")
        return name

    @property
    def time_seconds(self) -> float:
        return parse_duration(self.time)

    @property
    def mem_mb(self) -> int:
        return parse_mem(self.mem)

    @property
    def processes_per_node(self) -> int:
        return self.procs_per_node or max(1, self.gpus_per_node)


FAILURE_CLASSES = (
    "preempted", "timeout", "node_fail", "oom", "nccl", "stalled", "killed",
    "diverged", "data_error", "user_error", "cancelled", "unknown",
)


class RetrySpec(Section):
    max_attempts: int = Field(3, ge=1)
    on: list[Literal[FAILURE_CLASSES]] = Field(default_factory=lambda: ["preempted", "timeout", "node_fail"])  # type: ignore[valid-type]
    backoff: Duration = Field(60.0, description="seconds before a resubmission (doubles each time)")
    oom_halve_batch: bool = False



class SweepSpec(Section):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="cartesian product of key paths")
    points: list[dict[str, Any]] = Field(default_factory=list, alias="list", description="explicit override dicts")
    max_parallel: Optional[int] = Field(None, ge=1)


class PreserveSpec(Section):
    auto: bool = False
    dest: str = "preserved_data"
    checkpoints: Literal["none", "best", "last", "all"] = "best"


class MonitorSpec(Section):
    stall_after: Duration = Field(600.0, description="seconds without a heartbeat before STALLED")
    on_event: Optional[str] = Field(None, description="a command run with the event JSON on stdin")
    webhook: Optional[str] = None
    email: Optional[str] = None



class Spec(Section):
    """A whole experiment: one run, or one point of a sweep."""

    name: str
    trainer: str = "lm"
    description: str = ""
    backend: Literal["local", "slurm"] = "local"
    seed: int = 1337
    tags: list[str] = Field(default_factory=list)
    model: ModelSpec = Field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    data: DataSpec = Field(default_factory=lambda: DataSpec(builtin="arith"))
    train: TrainSpec = Field(default_factory=lambda: TrainSpec(max_steps=2000))
    eval: EvalSpec = Field(default_factory=EvalSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    early_stopping: Optional[EarlyStoppingSpec] = None
    checks: list[CheckSpec] = Field(default_factory=list, description="'expr' strings or {expr, severity, message}")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    sweep: Optional[SweepSpec] = None
    preserve: PreserveSpec = Field(default_factory=PreserveSpec)
    monitor: MonitorSpec = Field(default_factory=MonitorSpec)
    after: list[str] = Field(default_factory=list, description="runs or names that must succeed first")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables for the job")
    loss: dict[str, Any] = Field(default_factory=dict, description="trainer-specific loss weights")
    config: dict[str, Any] = Field(default_factory=dict, description="free-form section for custom trainers")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v) or ".." in v:
            raise ValueError(
                f"{v!r} is not a safe name: use letters, digits, '.', '_' and '-' "
                "(it becomes a folder and a job name)"
            )
        return v

    @field_validator("trainer")
    @classmethod
    def _trainer(cls, v: str) -> str:
        if v in BUILTIN_TRAINERS:
            return v
        if ":" not in v or not TRAINER_RE.match(v):
            close = difflib.get_close_matches(v, BUILTIN_TRAINERS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown trainer {v!r}: use one of {', '.join(BUILTIN_TRAINERS)} "
                f"or 'package.module:Class'{hint}"
            )
        return v

    @field_validator("checks", mode="before")
    @classmethod
    def _checks(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        return [{"expr": item} if isinstance(item, str) else item for item in v]

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        from orchestrator.lifecycle.provenance import SECRET_NAME

        for key in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if SECRET_NAME.search(key):
                raise ValueError(
                    f"{key} looks like a secret: a spec is copied into the run folder and bundles. "
                    f"Export it in your shell instead (jobs inherit the submitting environment)"
                )
        return v


def spec_class_for(trainer: Any) -> type[Spec]:
    """The schema for a trainer: built-in trainers may bring their own sections (torch-free modules)."""
    if trainer == "latentwire":
        from trainers.latentwire.config import LatentWireSpec

        return LatentWireSpec
    return Spec


# ------------------------------------------------------------------------------ loading
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
    trainer = dict(parse_overrides([o for o in overrides or [] if o.partition("=")[0].strip() == "trainer"])).get("trainer", data.get("trainer", "lm"))
    schema = spec_class_for(trainer)
    for key, value in parse_overrides(overrides or [], schema):
        set_path(data, key, value)
        lines[tuple(key.split("."))] = ("--set", 0)
    if backend is not None:
        data["backend"] = backend

    def validate(d: dict[str, Any], prefix: str = "") -> Spec:
        try:
            return schema.model_validate(d)
        except ValidationError as exc:
            raise _to_spec_errors(exc, lines, file, prefix, schema)

    # Validate the base once: errors in the file are reported once, not once per sweep point.
    base = {k: v for k, v in data.items() if k != "sweep"}
    validate({**base, "sweep": None})
    points = _expand_sweep(data, lines, file, schema)  # structural sweep errors, with their lines
    sweep = validate({**base, "sweep": data["sweep"]}).sweep if data.get("sweep") is not None else None
    resolved = []
    for index, (point, d) in enumerate(points):
        label = ", ".join(f"{k}={v!r}" for k, v in point.items())
        spec = validate(d, prefix=f"sweep point {index} ({label}): " if point else "")
        resolved.append(ResolvedSpec(spec, d, path, point, index if sweep else None, sweep))
    return resolved


def spec_to_yaml(spec: Spec, cache: Optional[dict[str, str]] = None) -> str:
    """The fully resolved spec (defaults filled in), as written to the run folder.

    A top-level mapping's YAML is the concatenation of its keys' YAML, so with a `cache` shared
    across the points of a sweep each distinct section is dumped once (1,000 points differ in
    one or two sections; the rest is shared).
    """
    import json

    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    parts = []
    for key, value in spec.model_dump(mode="json").items():
        memo = f"{key}\0{json.dumps(value, sort_keys=True)}" if cache is not None else None
        text = cache.get(memo) if cache is not None and memo is not None else None
        if text is None:
            text = yaml.dump({key: value}, Dumper=dumper, sort_keys=False)
            if cache is not None and memo is not None:
                cache[memo] = text
        parts.append(text)
    return "".join(parts)


def spec_from_run(spec_path: Path) -> Spec:
    """Re-read a run folder's resolved spec.yaml (the job side uses this)."""
    from orchestrator.spec.yamlpos import safe_load

    data = safe_load(spec_path.read_text(encoding="utf-8")) or {}
    schema = spec_class_for(data.get("trainer", "lm"))
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise _to_spec_errors(exc, {}, str(spec_path), schema=schema)

