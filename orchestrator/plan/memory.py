"""Memory of one training process: weights, gradients, optimizer states, activations.

The formula (bytes; P trainable parameters, F frozen ones, b micro-batch, s tokens per sample,
h d_model, h_kv = h * n_kv_head / n_head, f d_ff, L layers, H heads, V vocabulary, e bytes of an
activation: 2 under bf16/fp16 autocast, 4 in fp32):

  weights     4 P + k F         parameters stay fp32 under autocast (Accelerate's mixed precision);
                                k = the frozen modules' bytes per parameter (2 for a frozen bf16 model)
  gradients   4 P               frozen modules have none
  optimizer   8 P               AdamW's exp_avg and exp_avg_sq, fp32
  activations b s [L (e (6h + 2h_kv + 2f) + m) + e 2h + (e + 8) V]
                                per layer and token, what backward keeps (Korthikanti et al. 2022,
                                sec. 4.1, for any d_ff): two norm inputs (2h), the QKV input (h), Q
                                (h), K and V (2h_kv), the output projection's input (h), the MLP's
                                input (h) and its activation's input and output (2f); m = 2h bytes of
                                dropout masks when dropout > 0, plus e H s (+ H s masks) of stored
                                attention probabilities when attention is not fused (eager, or SDPA
                                on a CPU); then the embedding output and final norm input (2h), and
                                the loss: bf16 logits, fp32 log-softmax and its gradient ((e + 8) V).

With the gradients counted while all activations are still held, this is an upper bound of the
peak (gradients are freed by `zero_grad(set_to_none=True)` and allocated as activations are
freed). GPT-2 124M under bf16 with AdamW: 124,439,808 x 16 = 1.99 GB before activations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from orchestrator.plan.shape import ModelShape

GB = 1e9
HEADROOM = 0.90  # plan with 90% of a device's memory (allocator fragmentation, CUDA context)


def activation_bytes(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16") else 4


@dataclass
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    activations_per_sample: float
    batch_size: int

    @property
    def static(self) -> float:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        return self.static + self.activations

    def max_batch(self, device_bytes: float) -> int:
        """The largest micro-batch whose estimate fits in HEADROOM of `device_bytes` (0: not even one)."""
        room = device_bytes * HEADROOM - self.static
        return max(0, int(room // self.activations_per_sample)) if self.activations_per_sample else 0

    def as_dict(self) -> dict[str, float]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "total": self.total, "batch_size": self.batch_size}


def per_sample_activations(shape: ModelShape, precision: str, *, dropout: bool, fused_attention: bool) -> float:
    """Bytes of activations one sample keeps for backward (see the module doc)."""
    e = activation_bytes(precision)
    h, f, s, heads = shape.d_model, shape.d_ff, shape.seq_len, shape.n_head
    h_kv = h * (shape.n_kv_head or heads) // heads
    layer = e * (6 * h + 2 * h_kv + 2 * f) + (2 * h if dropout else 0)
    if not fused_attention:
        layer += (e + (1 if dropout else 0)) * heads * s
    per_token = shape.n_layer * layer + e * 2 * h + (e + 8) * shape.vocab_size
    return float(s * per_token)


def estimate(shape: ModelShape, batch_size: int, precision: str, *, dropout: bool = False,
             fused_attention: bool = True) -> MemoryEstimate:
    """The memory of one process training `shape` with micro-batch `batch_size` (see the module doc)."""
    frozen_bytes = shape.frozen_bytes_per_param or 4
    sample = per_sample_activations(shape, precision, dropout=dropout, fused_attention=fused_attention)
    return MemoryEstimate(weights=4.0 * shape.trainable + frozen_bytes * shape.frozen,
                          gradients=4.0 * shape.trainable, optimizer=8.0 * shape.trainable,
                          activations=batch_size * sample, activations_per_sample=sample, batch_size=batch_size)


def keep_global_batch(batch_size: int, grad_accum: int, max_batch: int) -> Optional[tuple[int, int]]:
    """(micro-batch, grad_accum) with the same global batch and micro-batch <= max_batch, the fewest
    accumulation steps first; None when not even a micro-batch of 1 fits."""
    if max_batch < 1:
        return None
    total = batch_size * grad_accum
    for accum in range(max(1, -(-total // max_batch)), total + 1):
        if total % accum == 0 and total // accum <= max_batch:
            return total // accum, accum
    return None
