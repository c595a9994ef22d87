"""The trainers orch knows, and each one's schema: ONE registry, filled from Python entry points.

A trainer registers a torch-free `TrainerInfo` in the entry-point group `orch.trainers`:

    [options.entry_points]              # setup.cfg of orch, or of any installed package
    orch.trainers =
        mytrainer = mypackage.config:TRAINER

so `pip install` of a package adds its trainers; orch's own are registered the same way in its
setup.cfg. The entry point named `default` is the trainer a spec without `trainer:` gets (orch's
setup.cfg points it at its language-model trainer); nothing in orchestrator/ names a trainer.
After editing entry points, reinstall (`pip install -e .`) so the installed metadata has them.

A spec may also name a trainer by import path, without registering it:
- `package.module:Class`: a `trainers.framework.base.Trainer` subclass; its class attribute
  `config_class` (a `Spec` subclass) is its schema, else the base `Spec`. Reading its schema
  imports that module (and so torch) in the process that validates the spec.
- `package.module:NAME` where NAME is a `TrainerInfo`: the torch-free way; `orch submit` and
  `orch monitor` then never import the trainer itself.
Import paths resolve against the installed packages and then the current directory (the job runs
from the folder it was submitted from, so the same module is found there).

Lookups are cached per process. Errors are `UnknownTrainer` (a ValueError with a hint), which the
spec loader turns into `file:line` errors and the CLI into exit 2.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

from orchestrator.spec.sections import TRAINER_RE, Spec

GROUP = "orch.trainers"
DEFAULT = "default"  # the entry point naming the trainer of specs without `trainer:`


class UnknownTrainer(ValueError):
    """A `trainer:` value that names no usable trainer; `hint` says what would."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# The prefixes a check may put before a metric (checks.judge.build_metrics).
CHECK_PREFIXES = ("best", "last", "latest", "first", "min", "max", "final")
# Metrics the framework's loop (trainers/framework) records for every trainer, beside the trainer's
# own `TrainerInfo.metrics`: the vocabulary `checks:` expressions are validated against at submit.
FRAMEWORK_METRICS = (
    "step", "steps", "tokens_seen", "attempt", "attempts", "time", "epoch", "step_time", "tokens_per_sec",
    "loss_avg", "nonfinite", "train_val_gap", "throughput", "eval_seconds", "train_seconds",
    "wall_seconds_this_attempt", "world_size", "stop_reason", "hf_best", "hf_final", "tokenizer",
)


@dataclass(frozen=True)
class TrainerInfo:
    """What the control plane knows about a trainer, without importing it (or torch).

    name:       the `trainer:` value that selects it.
    spec_class: its schema, a subclass of `Spec` with the trainer's own sections.
    entry:      `package.module:Class` of the Trainer subclass; imported only where it trains.
    metrics:    names of the metrics it reports (metrics.json / metrics_history.jsonl keys),
                for tools that check `checks:` expressions against them.
    paths:      key paths (e.g. `data.path`) naming a local file or folder the run reads: relative
                to the spec file (to the current directory when given with --set), made absolute
                in the run's spec.yaml, and required to exist at submit.
    paths_or_ids: key paths naming a local path or a hub id (e.g. `model.init_from`): made absolute
                when that local path exists; a value written as a path (`/`, `./`, `../`, `~`) that
                does not exist is an error at submit.
    prepare:    optional `package.module:function`, called by `orch prefetch` as function(spec,
                results_root) -> str (a line to print): work a job would otherwise do first on a
                compute node, such as tokenizing the corpus into a shared cache. Imported only there.
    """

    name: str
    spec_class: type[Spec]
    entry: str
    description: str = ""
    metrics: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    paths_or_ids: tuple[str, ...] = ()
    prepare: Optional[str] = None

    def metric_problem(self, name: str, declared: tuple[str, ...] = ()) -> Optional[str]:
        """Why a name in a `checks:` expression can never have a value for this trainer (with a
        did-you-mean), or None. `best.val_loss`, `min.loss`, `latent.f1`, `val_ppl@2x`,
        `params.total` are judged by their metric (the part after a `best.`-like prefix, before
        any `.` or `@`). A trainer that declares no metrics is not judged; `declared` adds the
        spec's own (`metrics.direction` keys)."""
        if not self.metrics:
            return None
        vocab = set(self.metrics) | set(FRAMEWORK_METRICS) | set(declared)
        parts = name.split(".")
        if parts[0] in CHECK_PREFIXES and len(parts) > 1:
            parts = parts[1:]
        base = parts[0].split("@")[0]
        if base in vocab or name in vocab:
            return None
        close = difflib.get_close_matches(base, sorted(vocab), n=1, cutoff=0.7)
        if close:
            return f"did you mean {close[0]!r}?"
        return f"trainer {self.name!r} reports: " + ", ".join(sorted(self.metrics))

    def __post_init__(self) -> None:
        if not (isinstance(self.spec_class, type) and issubclass(self.spec_class, Spec)):
            raise TypeError(f"trainer {self.name!r}: spec_class must be a subclass of {Spec.__module__}.Spec")
        if ":" not in self.entry:
            raise ValueError(f"trainer {self.name!r}: entry must be 'package.module:Class', got {self.entry!r}")
        if self.prepare is not None and ":" not in self.prepare:
            raise ValueError(f"trainer {self.name!r}: prepare must be 'package.module:function', got {self.prepare!r}")


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, tuple[importlib.metadata.EntryPoint, ...]]:
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        found.setdefault(ep.name, []).append(ep)
    return {name: tuple(eps) for name, eps in found.items()}


def names() -> list[str]:
    """The registered trainer names (without `default`, which is another name's alias)."""
    return sorted(n for n in _entry_points() if n != DEFAULT)


def _known_hint(ref: str = "") -> str:
    known = names()
    if not known:
        return (f"no trainer is registered in the entry-point group {GROUP!r}: install orch "
                f"(`pip install -e .` in its checkout) or a package that registers one")
    close = difflib.get_close_matches(ref, known, n=1) if ref else []
    return (f"did you mean {close[0]!r}? " if close else "") + \
        f"registered: {', '.join(known)}; or 'package.module:Class' for your own"


def _load(name: str) -> TrainerInfo:
    eps = _entry_points().get(name)
    if not eps:
        raise UnknownTrainer(f"unknown trainer {name!r}", _known_hint(name))
    values = sorted({ep.value for ep in eps})
    if len(values) > 1:
        raise UnknownTrainer(f"trainer {name!r} is registered more than once ({', '.join(values)})",
                             "uninstall one of the packages that register it")
    try:
        info = eps[0].load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is reported, never a traceback
        raise UnknownTrainer(f"trainer {name!r} ({values[0]}) cannot be loaded: {type(exc).__name__}: {exc}",
                             "is the package that registers it installed completely?") from None
    if not isinstance(info, TrainerInfo):
        raise UnknownTrainer(f"trainer {name!r}: entry point {values[0]} is not a TrainerInfo")
    return info


def default_name() -> str:
    """The trainer of a spec that has no `trainer:` (the entry point named `default`)."""
    if DEFAULT not in _entry_points():
        raise UnknownTrainer("the spec has no 'trainer:' and no default trainer is registered",
                             f"add 'trainer:' to the spec ({_known_hint()})")
    return _load(DEFAULT).name


def _import(module_name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # after installed packages: a folder never shadows them
    return importlib.import_module(module_name)


def _from_import_path(ref: str) -> TrainerInfo:
    module_name, _, attr = ref.partition(":")
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise UnknownTrainer(f"trainer {ref!r}: cannot import {module_name} ({exc})",
                             "install the package, or submit from the folder that holds it") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise UnknownTrainer(f"trainer {ref!r}: importing {module_name} failed: {type(exc).__name__}: {exc}") from None
    obj = getattr(module, attr, None)
    if isinstance(obj, TrainerInfo):
        return obj
    if not isinstance(obj, type):
        what = "has no" if obj is None else "has no class or TrainerInfo named"
        raise UnknownTrainer(f"trainer {ref!r}: module {module_name} {what} {attr!r}")
    schema = getattr(obj, "config_class", None) or Spec
    if not (isinstance(schema, type) and issubclass(schema, Spec)):
        raise UnknownTrainer(f"trainer {ref!r}: config_class must be a subclass of {Spec.__module__}.Spec, "
                             f"got {schema!r}")
    doc = (obj.__doc__ or "").strip().splitlines()
    return TrainerInfo(name=ref, spec_class=schema, entry=ref, description=doc[0] if doc else "",
                       metrics=tuple(getattr(obj, "metrics", ())))


def lookup(ref: Any) -> TrainerInfo:
    """The trainer a `trainer:` value names: a registered name, or an import path (see the module doc)."""
    if not isinstance(ref, str) or not TRAINER_RE.match(ref) or ref == DEFAULT:
        raise UnknownTrainer(f"unknown trainer {ref!r}", _known_hint(ref if isinstance(ref, str) else ""))
    return _lookup(ref)


@functools.lru_cache(maxsize=None)
def _lookup(ref: str) -> TrainerInfo:
    if ":" in ref:
        return _from_import_path(ref)
    info = _load(ref)
    if info.name != ref:
        raise UnknownTrainer(f"trainer {ref!r}: its entry point gives a TrainerInfo named {info.name!r}",
                             "the entry point's name and TrainerInfo.name must agree")
    return info


def spec_class_for(ref: Any) -> type[Spec]:
    """The schema a spec with `trainer: ref` validates with."""
    return lookup(ref).spec_class
