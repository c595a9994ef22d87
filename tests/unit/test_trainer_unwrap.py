"""`TrainerContext.unwrap`: the plain module under every wrapper, including torch.compile under DDP."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.utils import extract_model_from_parallel
from torch.nn.parallel import DistributedDataParallel

from trainers.framework.base import TrainerContext


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    acc = SimpleNamespace(unwrap_model=lambda m, keep_torch_compile: extract_model_from_parallel(
        m, keep_torch_compile=keep_torch_compile))
    return TrainerContext.unwrap(SimpleNamespace(accelerator=acc), model)  # type: ignore[arg-type]


def test_compiled_model_under_ddp_unwraps_to_the_plain_module(tmp_path: Path) -> None:
    """What `accelerator.prepare` makes of a compiled model with several processes: DDP(compiled)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        inner = torch.nn.Linear(3, 2)
        wrapped = DistributedDataParallel(torch.compile(inner, backend="eager"))
        assert _unwrap(wrapped) is inner
        assert list(_unwrap(wrapped).state_dict()) == ["weight", "bias"]  # no "_orig_mod." prefix
    finally:
        dist.destroy_process_group()


def test_compiled_and_plain_models_unwrap() -> None:
    inner = torch.nn.Linear(3, 2)
    assert _unwrap(torch.compile(inner, backend="eager")) is inner
    assert _unwrap(inner) is inner
