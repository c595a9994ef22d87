"""The trainer contract: what a trainer implements, and what the framework gives every trainer.

A trainer (the built-in `lm`, or yours via `trainer: package.module:Class`) subclasses `Trainer`:

    class MyTrainer(Trainer):
        def setup(self):                 # build model, data, optimizer from self.spec's sections
            self.model = ...             # saved in checkpoints (HF save_pretrained when it has one)
            self.optimizer = ...         # through accelerator.prepare: Accelerate checkpoints it (and sharding)
            self.sampler = ...           # optional: the default state_dict() saves sampler (and an unprepared scheduler)
            self.tokens_per_step = ...   # global tokens per optimizer step (token budgets, throughput)
        def train_step(self, step):      # ONE optimizer step; return {"loss": tensor, ...} and never call
            ...                          #   .item(): the framework syncs only at log steps
        def evaluate(self, step):        # {"val_loss": float, ...}, already reduced across processes
            ...

and gets, through `self.ctx` (a `TrainerContext`): the Accelerator (devices, processes, precision,
grad accumulation), run paths, JSONL loggers that write only on the main process, the checkpoint
manager, signal handling, early stopping, the step/token/epoch/time budget summed over attempts,
and the heartbeat. `Trainer.fit()` is the loop that ties them together: resume from the newest
valid checkpoint, step, log, evaluate, checkpoint, stop on budget / early stopping / signal.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from orchestrator.record.heartbeat import Heartbeat
from orchestrator.record.paths import RunPaths
from orchestrator.record.tree import Run
from orchestrator.spec.schema import Spec, spec_from_run
from orchestrator.record.states import EXIT_COMPLETED, EXIT_REQUEUE
from orchestrator.record.atomicio import atomic_write_json
from orchestrator.record.checkpoints import Checkpoint
from trainers.framework.checkpoint import CheckpointManager
from trainers.framework.early_stopping import EarlyStopping
from trainers.framework.metrics_logger import MetricsLogger
from trainers.framework.signals import PreemptionHandler


# ----------------------------------------------------------------------------- budget and clock
def token_cache_root(results_root: Path) -> Path:
    """Where tokenized corpora are cached for every run under `results_root` (`orch prefetch` fills it too)."""
    return Path(results_root) / ".cache" / "tokens"


@dataclass
class Budget:
    """Whichever ends first: steps, tokens, epochs, or training seconds summed over all attempts."""

    max_steps: Optional[int] = None
    max_tokens: Optional[int] = None
    epochs: Optional[float] = None
    max_time_s: Optional[float] = None
    tokens_per_step: int = 0
    epoch_tokens: Optional[int] = None  # tokens in one pass over the training data

    @classmethod
    def from_spec(cls, train: Any, tokens_per_step: int, epoch_tokens: Optional[int]) -> "Budget":
        if train.epochs is not None and not epoch_tokens:
            raise ValueError("train.epochs needs a trainer that sets epoch_tokens (the size of one pass)")
        return cls(train.max_steps, train.max_tokens, train.epochs, train.max_time_seconds,
                   tokens_per_step, epoch_tokens)

    @property
    def total_steps(self) -> Optional[int]:
        """Steps until the first step/token/epoch budget ends (None when only time bounds the run)."""
        limits = [self.max_steps] if self.max_steps else []
        if self.tokens_per_step:
            if self.max_tokens:
                limits.append(math.ceil(self.max_tokens / self.tokens_per_step))
            if self.epochs and self.epoch_tokens:
                limits.append(math.ceil(self.epochs * self.epoch_tokens / self.tokens_per_step))
        return min(limits) if limits else None

    def reason(self, step: int, tokens_seen: int) -> Optional[str]:
        """The deterministic budgets (the same on every process): steps, tokens, epochs."""
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if self.max_tokens is not None and tokens_seen >= self.max_tokens:
            return "max_tokens"
        if self.epochs is not None and self.epoch_tokens and tokens_seen >= self.epochs * self.epoch_tokens:
            return "epochs"
        return None

    def time_up(self, train_seconds: float) -> bool:
        return self.max_time_s is not None and train_seconds >= self.max_time_s


class TrainClock:
    """Training wall-clock over all attempts: seconds restored from the checkpoint + this attempt's."""

    def __init__(self) -> None:
        self.before = 0.0  # from earlier attempts (checkpointed)
        self._start: Optional[float] = None

    def start(self) -> None:
        self._start = time.monotonic()

    @property
    def this_attempt(self) -> float:
        return 0.0 if self._start is None else time.monotonic() - self._start

    @property
    def total(self) -> float:
        return self.before + self.this_attempt


@dataclass
class Outcome:
    """How `fit()` ended; `__main__` maps it to the exit code."""

    stop_reason: str
    step: int
    preempted: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.preempted:
            return EXIT_REQUEUE
        return 1 if self.stop_reason.startswith("diverged") else EXIT_COMPLETED


# ----------------------------------------------------------------------------- the services
class TrainerContext:
    """The framework services handed to a trainer; each is built from its own spec section."""

    def __init__(self, run_dir: Path, spec: Optional[Spec] = None, attempt: Optional[int] = None,
                 accelerator: Any = None) -> None:
        self.paths = RunPaths(Path(run_dir).resolve())
        self.spec: Spec = spec if spec is not None else spec_from_run(self.paths.spec)
        self.attempt = attempt if attempt is not None else int(os.environ.get("ORCH_ATTEMPT", "1") or 1)
        self.accelerator = (accelerator if accelerator is not None
                            else self.make_accelerator(self.spec, self.paths.root / "tracking"))
        self.is_main: bool = self.accelerator.is_main_process
        self.rank: int = self.accelerator.process_index
        self.world_size: int = self.accelerator.num_processes
        self.device: torch.device = self.accelerator.device
        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # Use the cores the job asked for, shared by the processes of this node, not every core of
            # the machine: oversubscribed OpenMP threads spin and make a busy node 10x slower.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
            torch.set_num_threads(max(1, min(torch.get_num_threads(), self.spec.resources.cpus_per_task // local)))
        if self.is_main:
            self.paths.make_dirs()
        self.run = Run(self.paths)
        self.logger = MetricsLogger(self.paths, self.is_main)
        self.checkpoints = CheckpointManager(
            self.paths.ckpt, self.accelerator, keep_last=self.spec.checkpoint.keep_last,
            hf_format=self.spec.checkpoint.hf_format,
            spec_text=self.paths.spec.read_text() if self.paths.spec.exists() else "",
            tokenizer_dir=self.paths.tokenizer)
        self.signals = PreemptionHandler({self.spec.resources.signal, "TERM"})
        self.early_stopping = EarlyStopping.from_spec(self.spec.early_stopping)
        self.heartbeat = Heartbeat(self.paths.heartbeat) if self.is_main else None
        self.clock = TrainClock()
        self.budget = Budget()

    @staticmethod
    def make_accelerator(spec: Spec, project_dir: Optional[Path] = None) -> Any:
        """Accelerator from `train.precision`, `train.device`, `train.grad_accum`, `train.trackers`
        (and the launcher's env); trackers write under `project_dir`."""
        from accelerate import Accelerator

        cpu = spec.train.device == "cpu" or (spec.train.device == "auto" and not torch.cuda.is_available())
        precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[spec.train.precision]
        trackers = list(spec.train.trackers) or None
        return Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=spec.train.grad_accum,
                           step_scheduler_with_optimizer=False, log_with=trackers,
                           project_dir=str(project_dir) if trackers and project_dir else None)

    # -- live tracking (train.trackers) -----------------------------------------------------------
    def start_tracking(self) -> None:
        """Start Accelerate's trackers named by `train.trackers`, with the spec's scalars as config."""
        if not self.spec.train.trackers:
            return
        from orchestrator.analysis.rundata import flatten
        from orchestrator.report.collect import scrub

        config = {k: v for k, v in scrub(flatten(self.spec.model_dump(mode="json"))).items()
                  if isinstance(v, (bool, int, float, str))}
        self.accelerator.init_trackers(self.spec.name, config=config)

    def track(self, record: dict[str, Any], step: int, prefix: str) -> None:
        """A log row's finite numbers to the trackers as `<prefix>/<key>` (main process only)."""
        if self.spec.train.trackers:
            self.accelerator.log({f"{prefix}/{k}": float(v) for k, v in record.items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  and k not in ("step", "time", "attempt")}, step=step)

    def end_tracking(self) -> None:
        if self.spec.train.trackers:
            self.accelerator.end_training()

    # -- where things are -------------------------------------------------------------------------
    @property
    def cache_root(self) -> Path:
        """The shared token cache: `<ORCH_RESULTS_ROOT>/.cache/tokens` (results root = run dir's grandparent)."""
        root = os.environ.get("ORCH_RESULTS_ROOT")
        return token_cache_root(Path(root) if root else self.paths.root.parent.parent)

    # -- small helpers trainers use ---------------------------------------------------------------
    def print(self, line: str) -> None:
        """A line in logs/training.log and on stdout (main process only)."""
        if self.is_main:
            self.logger.text(line)
            print(line, flush=True)

    def reduce_mean(self, values: dict[str, Any]) -> dict[str, float]:
        """Average scalar tensors/numbers over processes in ONE collective; returns Python floats."""
        if not values:
            return {}
        keys = list(values)
        t = torch.stack([torch.as_tensor(values[k], dtype=torch.float32).detach().reshape(()).to(self.device)
                         for k in keys])
        if self.world_size > 1:
            t = self.accelerator.reduce(t, reduction="mean")
        return dict(zip(keys, t.cpu().tolist()))

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(t, reduction="sum") if self.world_size > 1 else t

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain module under DDP / torch.compile wrappers (what checkpoints hold)."""
        model = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        # Accelerate takes the compile wrapper off only when it is outermost, not under DDP (train.compile
        # with several processes): its state dict would carry "_orig_mod." keys and evaluation recompile.
        return model._orig_mod if isinstance(model, torch._dynamo.eval_frame.OptimizedModule) else model

    def record(self, **fields: Any) -> None:
        """Merge fields (stop_reason, params, ...) into run.json, under its lock (main process only)."""
        if self.is_main and self.paths.run_json.exists():
            self.run.annotate(lambda rec: rec.update(fields))

    def beat_due(self) -> bool:
        """Whether a heartbeat would be written now (checked first, so a step builds no progress dict)."""
        hb = self.heartbeat
        return hb is not None and time.time() - hb._last >= hb.interval

    def beat(self, force: bool = False, **progress: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat(force=force, **progress)

    @contextlib.contextmanager
    def beating(self, phase: str, every: float = 30.0) -> Iterator[None]:
        """Heartbeats from a background thread during long steps without a loop (tokenizing a corpus)."""
        if self.heartbeat is None:
            yield
            return
        done = threading.Event()

        def run() -> None:
            while not done.wait(every):
                self.beat(force=True, phase=phase)

        self.beat(force=True, phase=phase)
        thread = threading.Thread(target=run, name="orch-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def stop_request(self, step: int, sync_every: int) -> Optional[str]:
        """A signal or `max_time` stop, agreed by every process (one tiny all-reduce per `sync_every` steps)."""
        if self.world_size == 1:
            if self.signals.requested:
                return self.signals.reason
            return "max_time" if self.budget.time_up(self.clock.total) else None
        if step % sync_every:
            return None
        flags = torch.tensor([float(self.signals.requested), float(self.budget.time_up(self.clock.total))],
                             device=self.device)
        flags = self.accelerator.reduce(flags, reduction="max")
        if flags[0] > 0:
            return self.signals.reason or f"preempted: SIG{self.spec.resources.signal}"
        return "max_time" if flags[1] > 0 else None


# ----------------------------------------------------------------------------- the contract + loop
class Trainer:
    """Subclass this; implement `setup`, `train_step`, `evaluate` (and state for anything else to resume)."""

    model: torch.nn.Module
    tokens_per_step: int = 0  # global tokens per optimizer step
    epoch_tokens: Optional[int] = None  # tokens in one pass over the training data (for train.epochs)

    def __init__(self, ctx: TrainerContext) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.step = 0
        self.tokens_seen = 0
        self.last_eval: dict[str, Any] = {}
        self.best: dict[str, Any] = {}  # metrics of the best evaluation (checkpoint.metric/mode)

    # ---- what a trainer implements ----------------------------------------------------------------
    def setup(self) -> None:
        """Build model, data and optimizer; set `self.model` and `self.tokens_per_step`."""
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimizer step. Return tensors (no `.item()`): {"loss": ..., optional "grad_norm", "lr"}."""
        raise NotImplementedError

    def evaluate(self, step: int) -> dict[str, Any]:
        """Evaluation metrics reduced over processes, e.g. {"val_loss": 1.9}. Called on every process."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What resuming exactly needs beyond the weights and what `accelerator.save_state` already holds.

        The default: `self.sampler`, and `self.optimizer`/`self.scheduler` when they did not go through
        `accelerator.prepare` (prepared ones, the GradScaler and every process's RNG are Accelerate's).
        Saved once, by the main process: it must be the same on every process.
        """
        from accelerate.optimizer import AcceleratedOptimizer
        from accelerate.scheduler import AcceleratedScheduler

        out = {}
        for name in ("optimizer", "scheduler", "sampler"):
            obj = getattr(self, name, None)
            if obj is not None and not isinstance(obj, (AcceleratedOptimizer, AcceleratedScheduler)):
                out[name] = obj.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            if name == "grad_scaler" and self.grad_scaler is None:
                continue  # an fp16 checkpoint resumed in another precision: no loss scale to restore
            getattr(self, name).load_state_dict(value)

    @property
    def grad_scaler(self) -> Any:
        """Accelerate's GradScaler (fp16 on a GPU), else None. Its loss scale is checkpointed: a resumed
        run restarting at the initial scale would skip steps the uninterrupted run took."""
        return getattr(self.ctx.accelerator, "scaler", None)

    def log_extras(self, record: dict[str, Any]) -> None:
        """Add trainer-specific fields (MFU, memory) to a train_diagnostics record; called at log steps."""

    def finish(self, outcome: Outcome) -> dict[str, Any]:
        """After training (not after preemption): final artefacts; returns extra fields for metrics.json."""
        return {}

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self) -> Outcome:
        """Set up, resume, and train until a budget, early stopping or a signal ends the run."""
        ctx, spec = self.ctx, self.spec
        ctx.signals.install()
        ctx.record(stop_reason=None, requeue=None)  # this attempt has not stopped yet (a stale reason misleads)
        ctx.start_tracking()
        try:
            with ctx.beating("setup"):  # tokenizing a big corpus can take longer than the stall limit
                self.setup()
            ctx.budget = Budget.from_spec(spec.train, self.tokens_per_step, self.epoch_tokens)
            self.resume()
            return self._loop()
        finally:
            ctx.signals.restore()
            ctx.logger.close()
            ctx.end_tracking()

    def _loop(self) -> Outcome:
        ctx, spec = self.ctx, self.spec
        total = ctx.budget.total_steps
        log_every, eval_every, ckpt_every = spec.train.log_every, spec.eval.every, spec.checkpoint.every
        ctx.beat(force=True, phase="train", step=self.step, total_steps=total)
        ctx.print(f"training from step {self.step} to {total or '?'} ({ctx.world_size} process(es), {ctx.device})")
        ctx.clock.start()
        interval_start, interval_steps, loss_sum = time.perf_counter(), 0, None
        reason: Optional[str] = None
        preempted = saved_at = evaluated_at = None
        while True:
            reason = (self._diverged or ctx.budget.reason(self.step, self.tokens_seen)
                      or ctx.stop_request(self.step, min(log_every, 10)))
            if reason:
                preempted = reason.startswith("preempted")
                break
            out = self.train_step(self.step)
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            interval_steps += 1
            loss = out["loss"].detach() if torch.is_tensor(out["loss"]) else torch.tensor(float(out["loss"]))
            loss_sum = loss if loss_sum is None else loss_sum + loss
            if self.step % log_every == 0:  # the only place a training step syncs with the host
                self._log_train(out, loss_sum / interval_steps, interval_start, interval_steps, total)
                interval_start, interval_steps, loss_sum = time.perf_counter(), 0, None
            paused = time.perf_counter()
            if self.step % eval_every == 0:
                evaluated_at = self.step
                if self._evaluate():
                    reason = ctx.early_stopping.reason  # type: ignore[union-attr]
            if self.step % ckpt_every == 0 or reason:
                self.save_checkpoint()
                saved_at = self.step
            interval_start += time.perf_counter() - paused  # eval/checkpoint time is not training throughput
            if ctx.beat_due():
                ctx.beat(step=self.step, total_steps=total, phase="train", train_loss=self._last_loss,
                         val_loss=self.last_eval.get("val_loss"), tokens_per_sec=round(self._last_tps, 1),
                         eta_s=self._eta(total), last_eval=self._eval_summary())
            if reason:
                break
        ctx.print(f"stopping at step {self.step}: {reason}")
        if preempted:
            if saved_at != self.step:
                self.save_checkpoint()
            # Launchers (torchrun under `accelerate launch`) turn a worker's exit 75 into 1: this record
            # tells the job wrapper that the attempt checkpointed on a signal and wants a requeue.
            ctx.record(stop_reason=reason, requeue={"attempt": ctx.attempt, "step": self.step})
            ctx.beat(force=True, step=self.step, total_steps=total, phase="preempted", train_loss=self._last_loss,
                 last_eval=self._eval_summary())
            return Outcome(reason, self.step, preempted=True)
        if reason and reason.startswith("diverged"):
            # No checkpoint of a NaN model: a retry resumes from the last good one.
            outcome = Outcome(reason, self.step, metrics=dict(self.last_eval))
            self._write_final_metrics(outcome, {})
            ctx.record(stop_reason=reason, requeue=None)
            ctx.beat(force=True, step=self.step, total_steps=total, phase="diverged", last_eval=self._eval_summary())
            return outcome
        if spec.eval.at_end and evaluated_at != self.step:
            self._evaluate()
        if saved_at != self.step:
            self.save_checkpoint()
        if spec.checkpoint.hf_format:  # every process: sharded weights are gathered
            ctx.checkpoints.save_final(self.step, self.model, self.tokens_seen, _floats(self.last_eval))
        outcome = Outcome(reason, self.step, metrics=dict(self.last_eval))
        extra = self.finish(outcome)
        self._write_final_metrics(outcome, extra)
        ctx.record(stop_reason=reason, requeue=None)
        ctx.beat(force=True, step=self.step, total_steps=total, phase="done", train_loss=self._last_loss,
                 val_loss=self.last_eval.get("val_loss"), tokens_per_sec=round(self._last_tps, 1),
                 last_eval=self._eval_summary())
        ctx.accelerator.wait_for_everyone()
        return outcome

    # ---- pieces of the loop -----------------------------------------------------------------------
    def _eta(self, total: Optional[int]) -> Optional[float]:
        from orchestrator.plan.projection import remaining_seconds  # the projection `orch plan` makes

        ctx = self.ctx
        time_left = ctx.budget.max_time_s - ctx.clock.total if ctx.budget.max_time_s is not None else None
        return remaining_seconds(self.step, self._start_step, total, ctx.clock.this_attempt, time_left)

    def _log_train(self, out: dict[str, Any], loss_avg: torch.Tensor, since: float, steps: int,
                   total: Optional[int]) -> None:
        ctx = self.ctx
        tensors = {k: v for k, v in out.items() if torch.is_tensor(v)}
        vals = ctx.reduce_mean({**tensors, "loss_avg": loss_avg})
        # Read the clock after that copy to the host: on a GPU the steps of the interval are only
        # queued when the Python loop reaches here; their kernels have all run once the values arrive.
        dt = time.perf_counter() - since
        rest = {k: v for k, v in out.items() if not torch.is_tensor(v)}
        tps = steps * self.tokens_per_step / dt if dt > 0 else 0.0
        record: dict[str, Any] = {"step": self.step, "tokens_seen": self.tokens_seen, "attempt": ctx.attempt,
                                  **vals, **rest, "step_time": dt / steps, "tokens_per_sec": tps,
                                  # NaN/inf in any step of the interval propagates into loss_avg
                                  "nonfinite": not (math.isfinite(vals["loss"]) and math.isfinite(vals["loss_avg"]))}
        if self.grad_scaler is not None:
            record["loss_scale"] = self.grad_scaler.get_scale()  # halves on every overflow (a skipped step)
        self.log_extras(record)
        ctx.logger.train(record)
        ctx.track(record, self.step, "train")
        self._last_tps = tps
        self._nonfinite_streak = self._nonfinite_streak + 1 if record["nonfinite"] else 0
        limit = self.spec.train.max_nonfinite_logs
        if limit and self._nonfinite_streak >= limit:  # the same on every process: vals are reduced
            self._diverged = f"diverged: non-finite loss at {limit} log steps in a row (step {self.step})"
        lr = f" lr {record['lr']:.3g}" if isinstance(record.get("lr"), float) else ""
        ctx.logger.progress(self.step, loss=vals["loss"])
        ctx.logger.text(f"step {self.step}/{total or '?'} loss {vals['loss']:.4f}{lr} "
                        f"{record['step_time'] * 1000:.1f} ms/step {tps:,.0f} tok/s")
        self._last_loss = vals["loss"]

    def _evaluate(self) -> bool:
        """Evaluate, log, keep the best model; True when early stopping says stop."""
        ctx, spec = self.ctx, self.spec
        ctx.beat(force=True, step=self.step, phase="eval")
        t0 = time.perf_counter()
        metrics = dict(self.evaluate(self.step))
        if "train_loss" in metrics and "val_loss" in metrics:
            metrics["train_val_gap"] = metrics["val_loss"] - metrics["train_loss"]
        record = {"step": self.step, "tokens_seen": self.tokens_seen, "attempt": ctx.attempt, **metrics,
                  "eval_seconds": round(time.perf_counter() - t0, 3)}
        ctx.logger.eval(record)
        ctx.track(record, self.step, "eval")
        self.last_eval = record
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and "@" not in k)
        ctx.print(f"eval step {self.step}: {shown}")
        key, mode = spec.checkpoint.metric, spec.checkpoint.mode
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old = self.best.get(key)
            if old is None or (value < old if mode == "min" else value > old):
                self.best = dict(record)
                if spec.checkpoint.keep_best:  # every process: sharded weights are gathered
                    ctx.checkpoints.save_best(self.step, self.model, self.tokens_seen, _floats(record))
        if ctx.early_stopping is not None:
            return ctx.early_stopping.update(metrics, self.step)
        return False

    def save_checkpoint(self) -> Optional[Path]:
        """Checkpoint now (every process must call it: each saves its RNG state and optimizer shard)."""
        ctx = self.ctx
        ctx.beat(force=True, step=self.step, phase="checkpoint")
        self._register_state()
        loop_state = {"step": self.step, "tokens_seen": self.tokens_seen, "train_seconds": ctx.clock.total,
                      "world_size": ctx.world_size, "best": _floats(self.best), "last_eval": _floats(self.last_eval),
                      "early_stopping": ctx.early_stopping.state_dict() if ctx.early_stopping else None}
        return ctx.checkpoints.save(self.step, self.model, loop_state, self.tokens_seen, _floats(self.last_eval))

    def resume(self) -> Optional[Checkpoint]:
        """Restore the newest checkpoint that loads (falling back past damaged ones); None on a fresh start."""
        ctx = self.ctx
        self._register_state()
        ctx.checkpoints.clean_partial()
        ctx.accelerator.wait_for_everyone()

        def apply(info: Checkpoint, state: dict[str, Any]) -> None:
            self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
            ctx.clock.before = float(state["train_seconds"])
            self.best, self.last_eval = state.get("best") or {}, state.get("last_eval") or {}
            if ctx.early_stopping is not None and state.get("early_stopping"):
                ctx.early_stopping.load_state_dict(state["early_stopping"])
            if int(state["world_size"]) != ctx.world_size:
                ctx.print(f"warning: checkpoint written by {state['world_size']} process(es), resuming with "
                          f"{ctx.world_size}: processes without a saved RNG state restart theirs (the data order is kept)")

        info = ctx.checkpoints.load_latest(self.model, apply, warn=ctx.print)
        self._start_step = self.step
        if info is not None:
            ctx.print(f"resumed from {info.name} (step {self.step}, {self.tokens_seen} tokens, "
                      f"{ctx.clock.before:.0f} s trained before)")
        return info

    def _register_state(self) -> None:
        """Hand `state_dict()`/`load_state_dict()` to `accelerator.register_for_checkpointing` (once)."""
        if not self._state_registered:
            self.ctx.accelerator.register_for_checkpointing(_TrainerState(self))
            self._state_registered = True

    _state_registered = False
    _start_step = 0
    _last_tps = 0.0
    _last_loss: Optional[float] = None
    _nonfinite_streak = 0
    _diverged: Optional[str] = None

    def _eval_summary(self) -> Optional[dict[str, Any]]:
        """The latest evaluation's scalars, mirrored into the heartbeat so `orch status` never reads
        the metrics history."""
        if not self.last_eval:
            return None
        return {k: v for k, v in _floats(self.last_eval).items() if isinstance(v, (int, float)) and "@" not in k}

    def _write_final_metrics(self, outcome: Outcome, extra: dict[str, Any]) -> None:
        ctx = self.ctx
        if not ctx.is_main:
            return
        secs = ctx.clock.total
        metrics = {
            "stop_reason": outcome.stop_reason,
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "final": _floats(self.last_eval),
            "best": _floats(self.best),
            "train_seconds": round(secs, 3),
            "wall_seconds_this_attempt": round(ctx.clock.this_attempt, 3),
            "throughput": {"tokens_per_sec": round(self.tokens_seen / secs, 1) if secs > 0 else None,
                           "last_tokens_per_sec": round(self._last_tps, 1)},
            "attempts": ctx.attempt,
            "world_size": ctx.world_size,
            **extra,
        }
        atomic_write_json(ctx.paths.metrics, metrics)


class _TrainerState:
    """The trainer's own state as an object Accelerate checkpoints (`state/custom_checkpoint_<i>.pkl`)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)


def _floats(d: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON-able numbers (tensors to floats) for manifests and metrics.json."""
    return {k: (v.item() if torch.is_tensor(v) else v) for k, v in d.items()}
