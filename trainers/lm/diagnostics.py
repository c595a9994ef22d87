"""Research diagnostics for LM training runs: pure torch, no I/O.

- effective rank of the final hidden states (representation collapse shows as a falling rank),
- prediction diversity (mode collapse: the model predicts the same few tokens everywhere),
- perplexity at multiples of the training window over the whole validation split, over all
  positions and over the positions past the training window (length generalization),
- validation loss on fixed batches.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainers.lm.models import max_sequence_length, supports_length_extrapolation


def effective_rank(hidden: torch.Tensor) -> float:
    """exp(entropy of the normalized singular values) of an [N, d] matrix (Roy & Vetterli, 2007).

    d for a matrix with d equal singular values (e.g. the identity), 1 for a rank-1 matrix.
    """
    h = hidden.detach().reshape(-1, hidden.shape[-1]).double()
    if h.shape[0] > h.shape[1]:
        # Singular values from the d x d Gram matrix: cheap for many rows (N tokens >> d).
        s = torch.linalg.eigvalsh(h.T @ h).clamp_min(0).sqrt()
    else:
        s = torch.linalg.svdvals(h)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def effective_rank_stats(hidden: torch.Tensor) -> dict[str, float]:
    """Effective rank and its ratio to the hidden size (1.0 = all directions used equally)."""
    rank = effective_rank(hidden)
    return {"effective_rank": rank, "effective_rank_ratio": rank / hidden.shape[-1]}


def _as_ids(logits_or_ids: torch.Tensor) -> torch.Tensor:
    return logits_or_ids.argmax(dim=-1) if logits_or_ids.is_floating_point() else logits_or_ids


def prediction_diversity(logits_or_ids: torch.Tensor) -> int:
    """Number of distinct predicted (argmax) tokens in a batch; a handful means mode collapse."""
    return int(torch.unique(_as_ids(logits_or_ids)).numel())


def top_predictions(ids: torch.Tensor, tokenizer: Any, k: int = 5) -> list[tuple[str, int]]:
    """The k most frequent predicted tokens as (text, count), to see *what* a collapsed model predicts."""
    counts = Counter(_as_ids(ids).reshape(-1).tolist())
    return [(tokenizer.decode([token]), n) for token, n in counts.most_common(k)]


@dataclass
class LossEval:
    """What `estimate_loss` returns when hidden states are asked for."""

    loss: float
    hidden: torch.Tensor  # [rows, d] final hidden states (after the final norm), float32, on CPU
    predictions: torch.Tensor  # argmax ids of the last batch, for prediction_diversity


def _logits_and_hidden(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass giving both the logits and the hidden states that feed the LM head."""
    hidden = model.base_model(input_ids=x).last_hidden_state
    return model.get_output_embeddings()(hidden), hidden


@torch.no_grad()
def estimate_loss(
    model: Any,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    autocast_ctx: Any = None,
    *,
    return_hidden: bool = False,
    max_hidden_rows: int = 8192,
) -> float | LossEval:
    """Mean cross-entropy over `batches` (equal-sized, so the mean of batch means, as nanoGPT).

    With `return_hidden`, also the final hidden states (up to `max_hidden_rows` token rows, enough
    for a stable effective rank) and the last batch's argmax predictions, from the same forward passes.
    """
    was_training = model.training
    model.eval()
    ctx = autocast_ctx if autocast_ctx is not None else contextlib.nullcontext()
    losses: list[float] = []
    kept: list[torch.Tensor] = []
    n_kept = 0
    preds = torch.empty(0, dtype=torch.long)
    try:
        for x, y in batches:
            with ctx:
                if return_hidden:
                    logits, hidden = _logits_and_hidden(model, x)
                else:
                    logits = model(input_ids=x).logits
            losses.append(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1)).item())
            if return_hidden:
                preds = logits.argmax(dim=-1).cpu()
                if n_kept < max_hidden_rows:
                    rows = hidden.reshape(-1, hidden.size(-1))[: max_hidden_rows - n_kept]
                    kept.append(rows.float().cpu())
                    n_kept += rows.shape[0]
    finally:
        model.train(was_training)
    if not losses:
        raise ValueError("estimate_loss got no batches")
    loss = sum(losses) / len(losses)
    if not return_hidden:
        return loss
    return LossEval(loss=loss, hidden=torch.cat(kept), predictions=preds)


def length_windows(tokens: np.ndarray, length: int, n_windows: int | None = None) -> int:
    """How many non-overlapping windows of `length` tokens (+1 target) the split holds, capped at `n_windows`."""
    available = max(0, (len(tokens) - 1) // length)
    return min(available, n_windows) if n_windows else available


@torch.no_grad()
def window_nll(model: Any, tokens: np.ndarray, length: int, beyond: int, batch_size: int,
               device: torch.device | str, *, n_windows: int | None = None,
               autocast_ctx: Any = None) -> tuple[float, int, float, int]:
    """(NLL sum, tokens, NLL sum beyond position `beyond`, tokens there) over consecutive windows of the split.

    Window i is tokens[i*length : (i+1)*length], predicting tokens[i*length+1 : (i+1)*length+1]. A
    position p (0-based in its window) is "beyond" when p >= `beyond`: its prediction conditions on more
    than `beyond` tokens, more context than a model trained on `beyond`-token windows ever had.
    """
    n = length_windows(tokens, length, n_windows)
    was_training = model.training
    model.eval()
    ctx = autocast_ctx if autocast_ctx is not None else contextlib.nullcontext()
    total = torch.zeros(2, dtype=torch.float64)
    try:
        for first in range(0, n, batch_size):
            rows = range(first, min(first + batch_size, n))
            block = np.stack([np.asarray(tokens[i * length : (i + 1) * length + 1], dtype=np.int64) for i in rows])
            xy = torch.from_numpy(block).to(device)
            with ctx:
                logits = model(input_ids=xy[:, :-1]).logits
            nll = F.cross_entropy(logits.float().transpose(1, 2), xy[:, 1:], reduction="none").double()
            total += torch.stack([nll.sum(), nll[:, beyond:].sum()]).cpu()
    finally:
        model.train(was_training)
    return float(total[0]), n * length, float(total[1]), n * max(0, length - beyond)


def _ppl(nll_sum: float, count: int) -> float:
    mean = nll_sum / count
    return math.exp(mean) if mean < 700 else float("inf")


def evaluate_lengths(
    model: Any,
    val_tokens: np.ndarray,
    window: int,
    multiples: list[int],
    batch_size: int,
    device: torch.device | str,
    *,
    n_windows: int | None = None,
    autocast_ctx: Any = None,
) -> dict[str, float | str]:
    """Validation perplexity on windows of `window * m` tokens for each m, over the whole split.

    {"val_ppl@2x": ..., "val_ppl@2x_beyond": ...}: `val_ppl@<m>x` over every position of the windows,
    `val_ppl@<m>x_beyond` over the positions past the training window only (m > 1): the length
    generalization figure. The split is cut into consecutive non-overlapping windows, all of them, or
    the first `n_windows`; batches of `batch_size // m` windows keep the tokens per batch about
    constant. Lengths the model cannot run (gpt2 beyond its positions) or the split cannot fill get
    an explicit "unsupported: <reason>" value instead of an exception, so one eval never kills a run.
    """
    limit = max_sequence_length(model)
    _, why = supports_length_extrapolation(model)
    results: dict[str, float | str] = {}
    for m in multiples:
        key = f"val_ppl@{m}x"
        length = window * m
        if limit is not None and length > limit:
            results[key] = f"unsupported: {length} tokens > {limit}; {why}"
            continue
        if length_windows(val_tokens, length) == 0:
            results[key] = f"unsupported: the validation split has {len(val_tokens)} tokens, fewer than {length + 1}"
            continue
        nll, count, nll_beyond, count_beyond = window_nll(
            model, val_tokens, length, window, max(1, batch_size // m), device,
            n_windows=n_windows, autocast_ctx=autocast_ctx)
        results[key] = _ppl(nll, count)
        if count_beyond:
            results[f"{key}_beyond"] = _ppl(nll_beyond, count_beyond)
    return results
