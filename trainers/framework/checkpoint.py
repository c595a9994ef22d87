"""Checkpoints, trainer side: what goes into the folders, written whole or not at all, and read back.

The folder format (layout, manifest, COMPLETE marker, validation, rotation, selection) is defined once,
without torch, in `orchestrator.record.checkpoints`; this module fills and reads the folders:

- `CheckpointManager.save` (every process calls it) fills `ckpt/.tmp-step-<N>/`: `accelerator.save_state`
  writes `state/` from every process (optimizer, sharded under FSDP/DeepSpeed; prepared schedulers; the
  fp16 GradScaler; the RNG states of each process; objects registered with
  `accelerator.register_for_checkpointing`), then the main process writes `model/` (HF `save_pretrained`
  + tokenizer files), `trainer_state.json` (the loop's counters) and `spec.yaml`, seals the folder
  (manifest with sizes and sha256, COMPLETE, fsync) and renames it to `ckpt/step-<N>/`.
  Without FSDP/DeepSpeed the weights are kept once, in `model/`: a save-state hook keeps Accelerate from
  writing a second copy into `state/`, and a load-state hook leaves them to `load_model_weights`.
- `CheckpointManager.load_latest` (every process) restores the newest step checkpoint that passes a deep
  validation (sizes and hashes) and loads; a damaged one is reported and the previous one is tried.
- `save_best` / `save_final` (every process: sharded weights are gathered) write `best/` and `hf-final/`.

Accelerate's `ProjectConfiguration(automatic_checkpoint_naming=True)` is not used: it writes
`checkpoints/checkpoint_<i>` in place (no temporary folder, no completeness marker), rotates by
deleting the oldest folders whatever their state, and `load_state()` without a folder picks the
highest number even when that save was torn. The explicit folder passed to `save_state` here is the
temporary one, published only once complete.

For other tools (generation, tests):

    load_model_weights(model, model_dir)        weights written by `save_model` into an existing model
    load_for_generation(run_dir, step=None, best=False, device="cpu") -> (model, tokenizer, Checkpoint)
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from orchestrator.record import checkpoints as ck
from orchestrator.record.checkpoints import Checkpoint


def save_model(model: torch.nn.Module, out: Path, hf_format: bool = True,
               state_dict: Optional[dict[str, torch.Tensor]] = None) -> None:
    """HF `save_pretrained` when the model has it (and hf_format), else a plain `model.pt` state dict.

    `state_dict`: the full weights when the model itself holds only a shard (FSDP/DeepSpeed ZeRO-3).
    """
    out.mkdir(parents=True, exist_ok=True)
    if hf_format and hasattr(model, "save_pretrained"):
        model.save_pretrained(str(out), safe_serialization=True, state_dict=state_dict)
    else:
        torch.save(state_dict if state_dict is not None else model.state_dict(), out / "model.pt")


def load_model_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Load weights written by `save_model` into an existing model (tied weights may be absent on disk)."""
    if (model_dir / "model.pt").exists():
        model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
        return
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model weights in {model_dir}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set()
    for key in missing:  # a tied output embedding is saved once, under the input embedding's name
        param = dict(model.named_parameters(remove_duplicate=False)).get(key)
        if param is not None and any(param is p for k, p in model.named_parameters() if k in state):
            tied.add(key)
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {model_dir} does not match the model: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")


def load_for_generation(run_dir: Path, step: Optional[int] = None, best: bool = False,
                        device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any, Checkpoint]:
    """(model in eval mode on `device`, the run's tokenizer, which checkpoint) for `orch generate`."""
    from transformers import AutoModelForCausalLM

    import trainers.lm.fastgpt  # noqa: F401  (registers the lm trainer's own arch with the Auto classes)
    from trainers.lm.tokenization import load_tokenizer

    info = ck.find(run_dir, step=step, best=best)
    model = AutoModelForCausalLM.from_pretrained(str(info.model_dir)).to(device).eval()
    return model, load_tokenizer(info.model_dir), info


class CheckpointManager:
    """Saves, rotates and restores one run's checkpoints through its Accelerator.

    Every process calls `save`, `save_best`, `save_final` and `load_latest` (Accelerate writes each
    process's RNG state and optimizer shard, and gathers sharded weights); only the main process
    writes the shared files, seals and renames.
    """

    def __init__(self, root: Path, accelerator: Any, keep_last: int = 2, hf_format: bool = True,
                 spec_text: str = "", tokenizer_dir: Optional[Path] = None) -> None:
        from accelerate.utils import DistributedType

        self.root = Path(root)
        self.accelerator = accelerator
        self.keep_last, self.hf_format = keep_last, hf_format
        self.spec_text = spec_text
        self.tokenizer_dir = tokenizer_dir
        # Accelerate saves and loads these models itself, sharded; elsewhere model/ is their only copy
        self.sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                                        DistributedType.MEGATRON_LM)

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    # ---- writing --------------------------------------------------------------------------------
    def _start(self, name: str) -> Path:
        """A fresh temporary folder for `name`, made by the main process, seen by all."""
        tmp = ck.tmp_dir(self.root, name)
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        return tmp

    def _fill_model(self, model: torch.nn.Module, dst: Path, full: Optional[dict[str, torch.Tensor]]) -> None:
        plain = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        save_model(plain, dst / ck.MODEL_DIR, self.hf_format, full)
        if self.tokenizer_dir is not None and self.tokenizer_dir.is_dir():
            for f in self.tokenizer_dir.iterdir():  # the tokenizer files beside the weights: one loadable folder
                if f.is_file():
                    shutil.copy2(f, dst / ck.MODEL_DIR / f.name)

    def _finish(self, tmp: Path, name: str, kind: str, step: int, tokens_seen: int,
                metrics: dict[str, Any]) -> Path:
        """Main process: spec, seal, rename into place."""
        if self.spec_text:
            (tmp / ck.SPEC).write_text(self.spec_text)
        ck.seal(tmp, kind=kind, step=step, tokens_seen=tokens_seen, metrics=metrics)
        final = self.root / name
        ck.publish(tmp, final)
        return final

    def _full_weights(self, model: torch.nn.Module) -> Optional[dict[str, torch.Tensor]]:
        """The gathered weights when they are sharded (a collective: every process calls it), else None."""
        return self.accelerator.get_state_dict(model) if self.sharded else None

    @contextlib.contextmanager
    def _weights_in_model_dir(self, model: torch.nn.Module) -> Iterator[None]:
        """Keep Accelerate's save_state/load_state away from `model`'s weights when model/ holds them."""
        def on_save(models: list[Any], weights: list[Any], _dir: str) -> None:
            if weights:  # one full state dict per model: the non-sharded case
                for i in reversed([i for i, m in enumerate(models) if m is model]):
                    weights.pop(i)

        def on_load(models: list[Any], _dir: str) -> None:
            for i in reversed([i for i, m in enumerate(models) if m is model]):
                models.pop(i)

        acc = self.accelerator
        handles = [] if self.sharded else [acc.register_save_state_pre_hook(on_save),
                                           acc.register_load_state_pre_hook(on_load)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def save(self, step: int, model: torch.nn.Module, loop_state: dict[str, Any], tokens_seen: int = 0,
             metrics: Optional[dict[str, Any]] = None) -> Optional[Path]:
        """Write `step-<step>/` (every process calls it), then drop checkpoints beyond `keep_last`.

        `loop_state` (JSON): the loop's counters, restored through `load_latest`'s `apply`.
        Returns the folder on the main process, None on the others.
        """
        name, acc = ck.step_name(step), self.accelerator
        tmp = self._start(name)
        try:
            with self._weights_in_model_dir(model):
                acc.save_state(str(tmp / ck.STATE_DIR))
            full = self._full_weights(model)
            acc.wait_for_everyone()  # every process's files are in tmp
            path = None
            if self.is_main:
                self._fill_model(model, tmp, full)
                (tmp / ck.LOOP_STATE).write_text(json.dumps(loop_state, indent=2, default=float) + "\n")
                path = self._finish(tmp, name, "step", step, tokens_seen, metrics or {})
                ck.rotate(self.root, self.keep_last)
        except BaseException:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        acc.wait_for_everyone()
        return path

    def _save_model_only(self, name: str, kind: str, step: int, model: torch.nn.Module, tokens_seen: int,
                         metrics: dict[str, Any]) -> Optional[Path]:
        full = self._full_weights(model)
        if not self.is_main:
            return None
        tmp = ck.tmp_dir(self.root, name)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            self._fill_model(model, tmp, full)
            return self._finish(tmp, name, kind, step, tokens_seen, metrics)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def save_best(self, step: int, model: torch.nn.Module, tokens_seen: int, metrics: dict[str, Any]) -> Optional[Path]:
        """Replace `best/` (weights and tokenizer only: for generation and comparison, not for resuming)."""
        return self._save_model_only(ck.BEST, "best", step, model, tokens_seen, metrics)

    def save_final(self, step: int, model: torch.nn.Module, tokens_seen: int, metrics: dict[str, Any]) -> Optional[Path]:
        """`hf-final/`: the trained model + tokenizer in one HF folder (`hf-final/model`), for transformers users."""
        return self._save_model_only(ck.FINAL, "final", step, model, tokens_seen, metrics)

    # ---- reading --------------------------------------------------------------------------------
    def clean_partial(self) -> None:
        """Remove the temporary folders of saves a crash interrupted (main process, before anything saves)."""
        if self.is_main:
            ck.clean_partial(self.root)

    def _agree(self, problem: Optional[str], from_main: bool) -> Optional[str]:
        """One answer on every process: the main process's (`from_main`), or the first process's problem."""
        if self.accelerator.num_processes == 1:
            return problem
        if from_main:
            from accelerate.utils import broadcast_object_list

            return broadcast_object_list([problem])[0]
        from accelerate.utils import gather_object

        return next((p for p in gather_object([problem]) if p is not None), None)

    def load_latest(self, model: torch.nn.Module, apply: Callable[[Checkpoint, dict[str, Any]], None],
                    warn: Callable[[str], None] = print) -> Optional[Checkpoint]:
        """Restore the newest step checkpoint that validates and loads (every process calls it).

        `accelerator.load_state` restores optimizer, schedulers, scaler, RNG and registered objects;
        `model`'s weights come from model/ (unless Accelerate holds them sharded in state/); then
        `apply(checkpoint, loop_state)` restores the loop. A checkpoint that fails the deep validation
        (sizes and sha256, on the main process) or raises while loading on any process is reported
        through `warn` and the previous one is tried, so one damaged file costs `checkpoint.every`
        steps, not the run. None when no checkpoint loads (a fresh start).
        """
        acc = self.accelerator
        for c in reversed(ck.list_checkpoints(self.root, kinds=("step",))):
            problem = None
            if self.is_main:
                if not c.resumable:
                    problem = (f"checkpoint {c.name} has format {c.format}, from an orch without Accelerate state: "
                               "it loads for generation but cannot resume")
                else:
                    why = ck.validate(c.path, deep=True)
                    problem = f"checkpoint {c.name} is damaged ({why})" if why else None
            problem = self._agree(problem, from_main=True)
            if problem is None:
                try:
                    loop_state = json.loads(c.loop_state_path.read_text())
                    with self._weights_in_model_dir(model):
                        acc.load_state(str(c.state_dir))
                    if not self.sharded:
                        load_model_weights(acc.unwrap_model(model, keep_torch_compile=False), c.model_dir)
                    apply(c, loop_state)
                except Exception as exc:  # noqa: BLE001 - any failure means: try the previous one
                    problem = f"checkpoint {c.name} is damaged ({type(exc).__name__}: {exc})"
                problem = self._agree(problem, from_main=False)
            if problem is None:
                return c
            warn(f"{problem}; falling back to the previous one")
        return None
