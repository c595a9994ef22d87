"""The model as planning sees it: what a trainer's config section computes without building it.

A trainer's `Spec` subclass returns a `ModelShape` from `model_shape()` (the base returns None:
no arithmetic for that trainer, a probe still measures it). The counts must equal the trainer's
own (orch's language-model trainer tests its against its counting function on built models).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a transformer, as a spec configures it.

    params:        every parameter, tied weights counted once.
    non_embedding: params minus token/position embeddings and an untied output embedding (Kaplan's N).
    trainable:     params with gradients and optimizer states (the rest is frozen: weights only).
    n_layer, d_model, n_head, d_ff, vocab_size: the (trained or, when everything is frozen, the
                   largest) transformer's dimensions; seq_len is the tokens of one training sample.
    frozen_bytes_per_param: bytes of a frozen parameter (a frozen bf16 model: 2); None: as trainable ones.
    n_kv_head:     key/value heads (grouped-query attention); None: n_head.
    dropout:       the dropout rate (above 0, backward keeps dropout masks).
    notes:         what the numbers assume (a BPE vocabulary at its configured size, ...).
    """

    params: int
    non_embedding: int
    trainable: int
    n_layer: int
    d_model: int
    n_head: int
    d_ff: int
    vocab_size: int
    seq_len: int
    frozen_bytes_per_param: Optional[int] = None
    n_kv_head: Optional[int] = None
    dropout: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def frozen(self) -> int:
        return self.params - self.trainable

    @property
    def embedding(self) -> int:
        return self.params - self.non_embedding
