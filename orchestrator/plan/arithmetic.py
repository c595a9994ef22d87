"""Parameters, tokens, FLOPs and the Chinchilla comparison of one run (pure arithmetic).

Training FLOPs per token are nanoGPT's / PaLM's estimate, 6 * (N + d_model * vocab) + 12 * n_layer *
d_model * seq_len: N the non-embedding parameters, d_model * vocab the output projection every token
pays for, the last term attention's QK^T and AV. The trainers compute MFU with this same function.
Chinchilla (Hoffmann et al., 2022): about 20 training tokens per parameter is compute-optimal, and
with C = 6 N D the optimal pair for a budget C is N = sqrt(C / 120), D = 20 N.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from orchestrator.plan.shape import ModelShape

CHINCHILLA_TOKENS_PER_PARAM = 20.0


def flops_per_token(n_non_embedding: int, n_layer: int, d_model: int, vocab_size: int, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token; see the module doc."""
    return 6.0 * (n_non_embedding + d_model * vocab_size) + 12.0 * n_layer * d_model * seq_len


def chinchilla_verdict(tokens: float, params: int) -> Optional[str]:
    """Under-trained below 0.8x of 20 tokens per parameter, over-trained above 1.25x, else about optimal."""
    if not params:
        return None
    ratio = tokens / (CHINCHILLA_TOKENS_PER_PARAM * params)
    return ("under-trained (fewer tokens than 20 per parameter)" if ratio < 0.8 else
            "over-trained (more than 20 tokens per parameter)" if ratio > 1.25 else "about compute-optimal")


def chinchilla_optimal(compute_flops: float) -> tuple[int, int]:
    """(parameters, tokens) that spend `compute_flops` compute-optimally (C = 6 N D, D = 20 N)."""
    n = math.sqrt(compute_flops / (6.0 * CHINCHILLA_TOKENS_PER_PARAM))
    return int(round(n)), int(round(CHINCHILLA_TOKENS_PER_PARAM * n))


def processes(spec: Any) -> int:
    """Data-parallel processes of a run: nodes x processes per node."""
    return spec.resources.nodes * spec.resources.processes_per_node


def total_steps(train: Any, tokens_per_step: int, epoch_tokens: Optional[int] = None) -> Optional[int]:
    """Steps until the first step/token/epoch budget ends, as the trainers' `Budget.total_steps`;
    None when only `max_time` bounds the run (or epochs without a known epoch size)."""
    limits = [train.max_steps] if train.max_steps else []
    if tokens_per_step:
        if train.max_tokens:
            limits.append(math.ceil(train.max_tokens / tokens_per_step))
        if train.epochs and epoch_tokens:
            limits.append(math.ceil(train.epochs * epoch_tokens / tokens_per_step))
    return min(limits) if limits else None


@dataclass
class Arithmetic:
    """The numbers `orch plan` prints for one run (None where the trainer gives no model shape)."""

    tokens_per_step: Optional[int]
    steps: Optional[int]
    tokens: Optional[int]
    params: Optional[int] = None
    non_embedding: Optional[int] = None
    trainable: Optional[int] = None
    tokens_per_param: Optional[float] = None
    tokens_per_non_embedding_param: Optional[float] = None
    verdict: Optional[str] = None
    flops_per_token: Optional[float] = None
    flops: Optional[float] = None
    optimal_params: Optional[int] = None  # Chinchilla's N for this run's compute
    optimal_tokens: Optional[int] = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def arithmetic(spec: Any, shape: Optional[ModelShape], epoch_tokens: Optional[int] = None) -> Arithmetic:
    """Tokens, steps, parameters, tokens per parameter and FLOPs of one resolved spec."""
    t = spec.train
    tps = t.batch_size * t.grad_accum * processes(spec) * shape.seq_len if shape else None
    steps = total_steps(t, tps or 0, epoch_tokens) if tps else t.max_steps
    tokens = steps * tps if steps and tps else None
    out = Arithmetic(tps, steps, tokens)
    if shape is None:
        return out
    out.params, out.non_embedding, out.trainable = shape.params, shape.non_embedding, shape.trainable
    out.flops_per_token = flops_per_token(shape.non_embedding, shape.n_layer, shape.d_model, shape.vocab_size,
                                          shape.seq_len)
    if tokens:
        out.tokens_per_param = tokens / shape.params
        out.tokens_per_non_embedding_param = tokens / shape.non_embedding if shape.non_embedding else None
        out.verdict = chinchilla_verdict(tokens, shape.params)
        out.flops = out.flops_per_token * tokens
        out.optimal_params, out.optimal_tokens = chinchilla_optimal(6.0 * shape.params * tokens)
    return out
