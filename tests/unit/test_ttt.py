"""The TTT layer (Sun et al. 2024) against the paper's update rule computed step by step.

The reference takes the layer's own views (theta_K x, theta_V x, theta_Q x and the learned inner
learning rates) and then runs the inner loop directly: for every mini-batch, the gradient of the
self-supervised loss 1/2 ||f(k_s; W) - v_s||^2 at the mini-batch's starting weights, for every token
s, by torch.autograd; W_t = W_start - sum_{s <= t} eta_{t,s} grad_s; the output f(q_t; W_t), token by
token. The layer computes the same in the dual form, without ever forming W_t.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainers.lm.ttt import TTTConfig, TTTForCausalLM, TTTLayer


def _f(kind: str, x: torch.Tensor, params: list[torch.Tensor], gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The inner model: x + LN(x W + b), or x + LN(gelu(x W1 + b1) W2 + b2)."""
    if kind == "linear":
        w, b = params
        z = x @ w + b
    else:
        w1, b1, w2, b2 = params
        z = F.gelu(x @ w1 + b1) @ w2 + b2
    return x + F.layer_norm(z, (z.shape[-1],), weight=gamma, bias=beta, eps=1e-6)


def reference(layer: TTTLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output with the inner loop run literally: autograd gradients, token by token."""
    with torch.no_grad():
        q, k, v, eta = layer.views(x)
    bsz, heads, length, dh = q.shape
    b = layer.mini_batch_size
    z = torch.zeros_like(q)
    for i in range(bsz):
        for h in range(heads):
            gamma, beta = layer.ttt_norm_weight[h, 0].detach(), layer.ttt_norm_bias[h, 0].detach()
            state = [p[h].detach().clone() for p in layer.initial_state()]
            for start in range(0, length, b):
                end = min(start + b, length)
                base = [p.clone().requires_grad_(True) for p in state]
                grads = []
                for s in range(start, end):
                    loss = 0.5 * ((_f(layer.kind, k[i, h, s], base, gamma, beta) - v[i, h, s]) ** 2).sum()
                    grads.append(torch.autograd.grad(loss, base))
                for t in range(start, end):
                    seen = t - start + 1
                    scale = 1.0 / seen if layer.token_mean else 1.0
                    w_t = [p.detach() - scale * sum(eta[i, h, s] * grads[s - start][j] for s in range(start, t + 1))
                           for j, p in enumerate(base)]
                    z[i, h, t] = _f(layer.kind, q[i, h, t], w_t, gamma, beta)
                    if t == end - 1:
                        state = w_t
    z = z.transpose(1, 2).reshape(bsz, length, heads * dh)
    with torch.no_grad():
        return layer.o_proj(layer.post_norm(z))


@pytest.mark.parametrize("kind,token_mean,length", [("linear", True, 10), ("linear", False, 8), ("mlp", True, 7)])
def test_dual_form_equals_the_step_by_step_inner_loop(kind: str, token_mean: bool, length: int) -> None:
    torch.manual_seed(0)
    config = TTTConfig(hidden_size=8, num_attention_heads=2, ttt_layer_type=kind, mini_batch_size=4,
                       ttt_token_mean=token_mean)
    layer = TTTLayer(config).double()
    with torch.no_grad():  # random, not the zero/one initial values: every term of the update matters
        for p in layer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, length, 8, dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)
    want = reference(layer, x)
    assert got.shape == want.shape == (2, length, 8)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


def test_the_state_carries_across_mini_batches_and_is_causal() -> None:
    torch.manual_seed(1)
    layer = TTTLayer(TTTConfig(hidden_size=8, num_attention_heads=2, mini_batch_size=4)).double()
    x = torch.randn(1, 12, 8, dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
        full, prefix = layer(x), layer(x[:, :6])
        changed = x.clone()
        changed[:, 2] += 1.0
        later = layer(changed)
    assert torch.allclose(full[:, :6], prefix, atol=1e-12)  # the future never changes the past
    assert (full[:, 8:] - later[:, 8:]).abs().max() > 1e-3  # a token of mini-batch 1 reaches mini-batch 3


def test_causal_lm_trains_saves_loads_and_generates(tmp_path) -> None:
    torch.manual_seed(0)
    config = TTTConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, mini_batch_size=4, eos_token_id=0)
    model = TTTForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 20, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.7  # it learns, W_0, eta and the views through the inner loop
    assert model.model.layers[0].ttt.W1.grad is not None and model.model.layers[0].ttt.lr_gate.weight.grad is not None
    model.save_pretrained(tmp_path / "m")
    from trainers.lm.models import load_pretrained

    loaded = load_pretrained(str(tmp_path / "m")).eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    out = loaded.generate(input_ids=ids[:1, :5], attention_mask=torch.ones_like(ids[:1, :5]), max_new_tokens=6,
                          do_sample=False, pad_token_id=0)
    assert out.shape[1] <= 11 and torch.equal(out[0, :5], ids[0, :5])
