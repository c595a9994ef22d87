"""The control plane's spec sections: units, and the sections every trainer on trainers/framework shares.

`Spec` holds what the orchestrator itself reads (name, trainer, backend, seed, resources, retry,
sweep, checks, monitor, preserve, after, env) and what the framework's loop reads (train budget
and optimizer basics, eval cadence, checkpoint, early_stopping). A trainer's own sections
(`model`, `tokenizer`, `data`, ...) live in its torch-free config module (trainers/<name>/config.py),
in a subclass of `Spec`.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.hub.assets import Asset
from orchestrator.plan.shape import ModelShape

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TRAINER_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")


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
    """A spec section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    def assets(self) -> list[Asset]:
        """The hub repositories this section names (keys relative to the section); a trainer's
        sections override it (`orchestrator.hub.assets`)."""
        return []


# ------------------------------------------------------------------------------ sections
# accelerate.utils.LoggerType's values (kept here: the control plane does not import accelerate/torch)
TRACKERS = ("all", "aim", "tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "swanlab")


class TrainSpec(Section):
    """The loop's budget and the optimizer basics every trainer on trainers/framework shares."""

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
    """When the framework evaluates; a trainer's schema adds what its evaluation needs."""

    every: int = Field(250, ge=1, description="evaluate every N optimizer steps")
    at_end: bool = Field(True, description="evaluate after the last step too")


class CheckpointSpec(Section):
    every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    keep_best: bool = True
    metric: str = "val_loss"
    mode: Optional[Literal["min", "max"]] = Field(None, description="default: the metric's direction (metrics:)")
    hf_format: bool = True


class EarlyStoppingSpec(Section):
    metric: str = "val_loss"
    mode: Optional[Literal["min", "max"]] = Field(None, description="default: the metric's direction (metrics:)")
    patience: int = Field(10, ge=1, description="evaluations without improvement")
    min_delta: float = Field(0.0, ge=0)


class MetricsSpec(Section):
    """Which way is better for metrics whose names do not say (orchestrator/analysis/metrics.py)."""

    direction: dict[str, Literal["min", "max"]] = Field(
        default_factory=dict, description="metric -> min|max, e.g. {my_score: max}: best.<metric>, checkpoint.mode")


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


def _string_or_check(schema: dict[str, Any]) -> None:
    """`checks:` items may be bare expression strings (read as {expr: ...}): say so in the JSON Schema."""
    schema["items"] = {"anyOf": [{"type": "string", "description": "a check expression"}, schema["items"]]}


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
    online: Optional[bool] = Field(None, description="the compute nodes reach the Hugging Face hub (default: the "
                                   "cluster profile's `online`, else no: jobs run with HF_HUB_OFFLINE=1)")
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


# the one table (orchestrator/record/record.py): retry.on accepts every class
from orchestrator.record.record import FAILURE_CLASSES  # noqa: E402


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
    """A whole experiment: one run, or one point of a sweep. The control plane's sections only.

    A trainer's schema subclasses this and adds its own sections (`model`, `data`, ...); the
    registry (`orchestrator.spec.registry`) says which schema a `trainer:` value validates with.
    """

    name: str
    trainer: str = Field(description="a registered trainer name, or 'package.module:Class' / 'package.module:TRAINER'")
    description: str = ""
    backend: Literal["local", "slurm"] = "local"
    seed: int = 1337
    tags: list[str] = Field(default_factory=list)
    train: TrainSpec = Field(default_factory=lambda: TrainSpec(max_steps=2000))
    eval: EvalSpec = Field(default_factory=EvalSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    early_stopping: Optional[EarlyStoppingSpec] = None
    checks: list[CheckSpec] = Field(default_factory=list, description="'expr' strings or {expr, severity, message}",
                                    json_schema_extra=_string_or_check)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    sweep: Optional[SweepSpec] = None
    preserve: PreserveSpec = Field(default_factory=PreserveSpec)
    monitor: MonitorSpec = Field(default_factory=MonitorSpec)
    after: list[str] = Field(default_factory=list, description="runs or names that must succeed first")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables for the job")

    def model_shape(self) -> Optional[ModelShape]:
        """The model's sizes for `orch plan` (`orchestrator.plan.shape`); a trainer's schema overrides
        this. None: no arithmetic for this trainer (a probe still measures it)."""
        return None

    def assets(self) -> list[Asset]:
        """Every hub asset the spec's sections name, keys as full paths (`data.hub`), each once."""
        found: dict[tuple, Asset] = {}
        for name in type(self).model_fields:
            section = getattr(self, name)
            if isinstance(section, Section):
                for asset in section.assets():
                    found.setdefault(asset.identity, asset.under(name))
        return list(found.values())

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
        if not TRAINER_RE.match(v):
            raise ValueError(f"unknown trainer {v!r}: give a trainer's name or 'package.module:Class'")
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
        # A spec is copied into the run folder, job.sh and bundles: secrets are refused here
        # (by name, or by a token-shaped value under any name) rather than masked later.
        from orchestrator.secrets import is_secret_name, looks_like_secret

        for key, value in v.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            what = ("looks like a secret" if is_secret_name(key) else
                    "has a value that looks like a secret (a token, key or password)" if looks_like_secret(value)
                    else None)
            if what:
                raise ValueError(
                    f"{key} {what}: a spec is copied into the run folder, job.sh and bundles. "
                    f"Export it in your shell instead (jobs inherit the submitting environment)"
                )
        return v

    @model_validator(mode="after")
    def _metric_modes(self) -> "Spec":
        """checkpoint.mode / early_stopping.mode default to their metric's known direction."""
        from orchestrator.analysis.metrics import direction

        for where, section in (("checkpoint", self.checkpoint), ("early_stopping", self.early_stopping)):
            if section is None or section.mode is not None:
                continue
            mode = direction(section.metric, self.metrics.direction)
            if mode is None:
                raise ValueError(
                    f"{where}.mode: whether a higher or lower {section.metric} is better is unknown; "
                    f"set {where}.mode: min or max, or metrics: {{direction: {{{section.metric}: min|max}}}}")
            section.mode = mode  # type: ignore[assignment]
        return self
