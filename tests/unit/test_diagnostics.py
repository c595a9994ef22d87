"""Research diagnostics: effective rank, prediction diversity, validation loss, perplexity at length multiples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers.lm.config import ModelSpec
from trainers.lm.data import iter_eval_batches
from trainers.lm.diagnostics import (
    effective_rank,
    effective_rank_stats,
    estimate_loss,
    evaluate_lengths,
    prediction_diversity,
    top_predictions,
)
from trainers.lm.models import build_model
from trainers.lm.tokenization import CharTokenizer

V = 20
VAL = np.random.default_rng(0).integers(0, V, 5000).astype(np.uint16)


def _model(arch: str = "gpt2", window: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(arch=arch, n_layer=1, n_head=2, d_model=16, max_seq_len=window), V)


def test_effective_rank_of_identity_is_full_and_of_rank_one_is_one():
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0)
    assert effective_rank(torch.eye(8) * 3.0) == pytest.approx(8.0)  # scale does not matter
    u, v = torch.randn(100, 1), torch.randn(1, 8)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-4)
    assert effective_rank_stats(torch.eye(8)) == pytest.approx({"effective_rank": 8.0, "effective_rank_ratio": 1.0})


def test_effective_rank_is_the_same_for_few_and_many_rows():
    h = torch.randn(200, 16)
    s = torch.linalg.svdvals(h.double())
    p = s / s.sum()
    expected = math.exp(-(p * p.log()).sum().item())
    assert effective_rank(h) == pytest.approx(expected, rel=1e-6)  # Gram path (N > d)
    assert effective_rank(h.T) == pytest.approx(expected, rel=1e-6)  # SVD path (N < d)
    assert effective_rank(torch.zeros(4, 4)) == 0.0


def test_prediction_diversity_counts_distinct_argmax_tokens():
    ids = torch.tensor([[1, 1, 2], [2, 3, 1]])
    assert prediction_diversity(ids) == 3
    assert prediction_diversity(F.one_hot(ids, 10).float()) == 3  # logits: argmax first
    collapsed = torch.zeros(4, 16, 10)
    collapsed[..., 7] = 1.0
    assert prediction_diversity(collapsed) == 1


def test_top_predictions_decodes_the_most_frequent_tokens():
    tok = CharTokenizer.from_text("abc")
    ids = torch.tensor([[0, 0, 0, 2], [2, 1, 0, 0]])
    assert top_predictions(ids, tok, k=2) == [("a", 5), ("c", 2)]


def test_estimate_loss_is_the_mean_cross_entropy_and_restores_train_mode():
    model = _model().train()
    batches = list(iter_eval_batches(VAL, 16, 4, 3, seed=0))
    expected = []
    with torch.no_grad():
        model.eval()
        for x, y in batches:
            expected.append(F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten()).item())
    model.train()
    assert estimate_loss(model, batches) == pytest.approx(sum(expected) / 3, rel=1e-6)
    assert model.training
    assert estimate_loss(model, batches) == pytest.approx(math.log(V), abs=0.5)  # an untrained model


def test_estimate_loss_can_return_final_hidden_states():
    model = _model("llama")
    batches = list(iter_eval_batches(VAL, 16, 4, 3, seed=0))
    out = estimate_loss(model, batches, return_hidden=True, max_hidden_rows=100)
    assert out.loss == pytest.approx(estimate_loss(model, batches), rel=1e-6)
    assert out.hidden.shape == (100, 16) and out.predictions.shape == (4, 16)
    with torch.no_grad():  # the hidden states are what feeds the LM head (after the final norm)
        last = model.base_model(input_ids=batches[0][0]).last_hidden_state.reshape(-1, 16)[:64]
    assert torch.allclose(out.hidden[:64], last, atol=1e-5)
    assert 1.0 < effective_rank(out.hidden) <= 16.0


def test_lengths_beyond_gpt2_positions_are_reported_unsupported():
    results = evaluate_lengths(_model("gpt2"), VAL, window=16, multiples=[1, 2, 10], batch_size=8, device="cpu", n_windows=4)
    assert isinstance(results["val_ppl@1x"], float) and results["val_ppl@1x"] > 1.0
    for key in ("val_ppl@2x", "val_ppl@10x"):
        assert results[key].startswith("unsupported:") and "learned absolute position embeddings" in results[key]


def test_rope_model_is_evaluated_at_every_multiple_unless_validation_is_too_short():
    results = evaluate_lengths(_model("llama"), VAL, window=16, multiples=[1, 2, 10, 400], batch_size=8, device="cpu", n_windows=4)
    assert all(isinstance(results[f"val_ppl@{m}x"], float) for m in (1, 2, 10))
    assert results["val_ppl@400x"].startswith("unsupported: the validation split has 5000 tokens")


def independent_length_ppl(model: torch.nn.Module, tokens: np.ndarray, window: int, m: int,
                           n_windows: int | None = None) -> tuple[float, float]:
    """(perplexity over all positions, over positions >= window) of consecutive m x window windows, one by one."""
    length = window * m
    n = (len(tokens) - 1) // length if n_windows is None else n_windows
    all_nll, beyond_nll, all_n, beyond_n = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for i in range(n):
            seq = torch.tensor(tokens[i * length : (i + 1) * length + 1].astype(np.int64))
            logp = torch.log_softmax(model(input_ids=seq[None, :-1]).logits[0].double(), dim=-1)
            nll = -logp[torch.arange(length), seq[1:]]
            all_nll, all_n = all_nll + nll.sum().item(), all_n + length
            beyond_nll, beyond_n = beyond_nll + nll[window:].sum().item(), beyond_n + length - window
    return math.exp(all_nll / all_n), (math.exp(beyond_nll / beyond_n) if beyond_n else float("nan"))


@pytest.mark.parametrize("arch", ["llama", "ttt"])
def test_length_perplexity_covers_the_whole_split_and_the_positions_beyond_the_window(arch: str):
    model = _model(arch).eval()
    tokens = VAL[:1500]  # 93, 46 and 23 windows at 1x, 2x and 4x of 16 tokens, the last partial ones dropped
    results = evaluate_lengths(model, tokens, window=16, multiples=[1, 2, 4], batch_size=8, device="cpu")
    assert "val_ppl@1x_beyond" not in results  # at 1x no position is past the window
    for m in (1, 2, 4):
        ppl, beyond = independent_length_ppl(model, tokens, 16, m)
        assert results[f"val_ppl@{m}x"] == pytest.approx(ppl, rel=1e-5)
        if m > 1:
            assert results[f"val_ppl@{m}x_beyond"] == pytest.approx(beyond, rel=1e-5)
    capped = evaluate_lengths(model, tokens, window=16, multiples=[2], batch_size=3, device="cpu", n_windows=5)
    ppl, beyond = independent_length_ppl(model, tokens, 16, 2, n_windows=5)
    assert capped == pytest.approx({"val_ppl@2x": ppl, "val_ppl@2x_beyond": beyond}, rel=1e-5)
