"""TTT layers (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden States").

A TTT layer is a recurrent layer whose hidden state is the weights W of a small model f, and
whose update rule is a gradient step on a self-supervised loss: for each token x_t,

    training view  k_t = theta_K x_t,  label view  v_t = theta_V x_t,  test view  q_t = theta_Q x_t
    loss           l(W; x_t) = 1/2 || f(k_t; W) - v_t ||^2
    f(k; W)        = k + LN(k W + b)                                   (TTT-Linear)
                   = k + LN(gelu(k W1 + b1) W2 + b2)                    (TTT-MLP, hidden 4 x head_dim)
    output         z_t = f(q_t; W_t)

Mini-batch TTT (the paper's section 2.4): the tokens are taken in mini-batches of b; every
gradient in a mini-batch is taken at W_{t'}, the state after the previous mini-batch, so

    W_t = W_{t'} - sum_{s = t'+1 .. t} eta_{t,s} grad l(W_{t'}; x_s)

with the learnable inner learning rate of section 2.7, eta_s = base_lr * sigmoid(theta_lr x_s) / head_dim
(one per head and token; the division by head_dim as the authors' implementation), and, with
`ttt_token_mean` (the default, as the authors' implementation), eta_{t,s} = eta_s / (t - t'): the mean of
the mini-batch's gradients so far rather than their sum. W_0 (and b_0) are learned by the outer loop.

The computation here is the dual form (section 2.5): since every gradient of a mini-batch is
taken at the same W_{t'}, grad_W l(W_{t'}; x_s) = k_s^T g_s with g_s = dl/dZ_s, and

    Z_t(q) = q_t W_t + b_t = q_t W_{t'} + b_{t'} - sum_s eta_{t,s} (q_t . k_s + 1) g_s

is one masked matrix product per mini-batch (like causal attention over b tokens), without
materializing W_t for each token. `tests/unit/test_ttt.py` checks it against the primal form
computed step by step with torch.autograd. Each layer is a heads-wise TTT layer in a Transformer
backbone (the paper's "TTT-Linear (T)"): pre-norm residual blocks of TTT then a SwiGLU MLP.

TTTConfig / TTTForCausalLM are a transformers PretrainedConfig / PreTrainedModel (+ GenerationMixin),
so the `lm` trainer builds, trains, checkpoints (`save_pretrained`), evaluates and generates with
them as with the transformers architectures (`model.arch: ttt`). Generation keeps no cache: each
new token reruns the (cropped) context, which is what the trainer's sampling does anyway.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

try:  # transformers >= 5: initialization that from_pretrained does not repeat over loaded weights
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - older transformers
    _init = nn.init  # type: ignore[assignment]

LAYER_TYPES = ("linear", "mlp")


class TTTConfig(PretrainedConfig):
    """A decoder of TTT layers. Sizes are named as in Llama's config, so the lm trainer maps the spec onto them."""

    model_type = "ttt"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 128,
        intermediate_size: int = 512,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        max_position_embeddings: int = 2048,
        ttt_layer_type: str = "linear",
        mini_batch_size: int = 16,
        ttt_base_lr: Optional[float] = None,
        ttt_token_mean: bool = True,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        hidden_dropout: float = 0.0,
        tie_word_embeddings: bool = True,
        use_cache: bool = False,
        pad_token_id: Optional[int] = None,
        bos_token_id: Optional[int] = None,
        eos_token_id: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        if ttt_layer_type not in LAYER_TYPES:
            raise ValueError(f"ttt_layer_type {ttt_layer_type!r}: expected one of {', '.join(LAYER_TYPES)}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads "
                             f"({num_attention_heads})")
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings  # no position embeddings: informative only
        self.ttt_layer_type = ttt_layer_type
        self.mini_batch_size = mini_batch_size
        # the paper's base inner learning rates: 1.0 for TTT-Linear, 0.1 for TTT-MLP
        self.ttt_base_lr = ttt_base_lr if ttt_base_lr is not None else (1.0 if ttt_layer_type == "linear" else 0.1)
        self.ttt_token_mean = ttt_token_mean
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.hidden_dropout = hidden_dropout
        self.use_cache = use_cache
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


# ----------------------------------------------------------------------------- the inner model f
def ln_forward(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Layer norm over the last dim with per-head affine parameters [H, 1, d] (broadcast over tokens)."""
    mu = z.mean(-1, keepdim=True)
    var = z.var(-1, keepdim=True, unbiased=False)
    return (z - mu) / torch.sqrt(var + eps) * weight + bias


def ln_l2_grad(z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               eps: float) -> torch.Tensor:
    """d/dz of 1/2 || LN(z) - target ||^2 (summed over the last dim), for each row: the inner loss's g."""
    d = z.shape[-1]
    mu = z.mean(-1, keepdim=True)
    std = torch.sqrt(z.var(-1, keepdim=True, unbiased=False) + eps)
    x_hat = (z - mu) / std
    grad_x_hat = (x_hat * weight + bias - target) * weight
    return (d * grad_x_hat - grad_x_hat.sum(-1, keepdim=True)
            - x_hat * (grad_x_hat * x_hat).sum(-1, keepdim=True)) / (d * std)


def _gelu_grad(z: torch.Tensor) -> torch.Tensor:
    """Derivative of the exact (erf) GELU."""
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


class TTTLayer(nn.Module):
    """One multi-head TTT layer (TTT-Linear or TTT-MLP), computed in the dual form, mini-batch by mini-batch."""

    def __init__(self, config: TTTConfig) -> None:
        super().__init__()
        d, h = config.hidden_size, config.num_attention_heads
        self.num_heads, self.head_dim = h, d // h
        self.mini_batch_size = config.mini_batch_size
        self.base_lr = config.ttt_base_lr
        self.token_mean = config.ttt_token_mean
        self.kind = config.ttt_layer_type
        self.eps = 1e-6
        self.q_proj = nn.Linear(d, d, bias=False)  # theta_Q: test view
        self.k_proj = nn.Linear(d, d, bias=False)  # theta_K: training view
        self.v_proj = nn.Linear(d, d, bias=False)  # theta_V: label view
        self.o_proj = nn.Linear(d, d, bias=False)
        self.lr_gate = nn.Linear(d, h)  # theta_lr: the learnable inner learning rate, per head
        dh = self.head_dim
        if self.kind == "linear":
            self.W1 = nn.Parameter(torch.empty(h, dh, dh))
            self.b1 = nn.Parameter(torch.zeros(h, 1, dh))
        else:
            self.W1 = nn.Parameter(torch.empty(h, dh, 4 * dh))
            self.b1 = nn.Parameter(torch.zeros(h, 1, 4 * dh))
            self.W2 = nn.Parameter(torch.empty(h, 4 * dh, dh))
            self.b2 = nn.Parameter(torch.zeros(h, 1, dh))
        self.ttt_norm_weight = nn.Parameter(torch.ones(h, 1, dh))  # the LN inside f, per head
        self.ttt_norm_bias = nn.Parameter(torch.zeros(h, 1, dh))
        self.post_norm = nn.LayerNorm(d, eps=self.eps)

    def initial_state(self) -> tuple[torch.Tensor, ...]:
        """W_0 (and b_0 ...): the inner model's learned initial weights."""
        return (self.W1, self.b1) if self.kind == "linear" else (self.W1, self.b1, self.W2, self.b2)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, H, L, dh] and the per-token inner learning rates eta [B, H, L]."""
        bsz, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(bsz, length, self.num_heads, self.head_dim).transpose(1, 2)

        eta = self.base_lr * torch.sigmoid(self.lr_gate(x)).transpose(1, 2) / self.head_dim
        return heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)), eta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, length, d = x.shape
        q, k, v, eta = self.views(x)
        b = self.mini_batch_size
        pad = (-length) % b  # padding after the last token changes none of the outputs before it
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            eta = F.pad(eta, (0, pad))
        n = (length + pad) // b
        state = [p.unsqueeze(0).expand(bsz, *p.shape) for p in self.initial_state()]
        steps = torch.arange(1, b + 1, device=x.device, dtype=x.dtype)
        mask = torch.ones(b, b, device=x.device, dtype=torch.bool).tril()
        outputs = []
        for i in range(n):
            sl = slice(i * b, (i + 1) * b)
            e = eta[:, :, None, sl].expand(bsz, self.num_heads, b, b)  # eta_{t,s} = eta_s (/ (t - t'))
            if self.token_mean:
                e = e / steps[:, None]
            e = e * mask
            z, state = self._mini_batch(q[:, :, sl], k[:, :, sl], v[:, :, sl], e, state)
            outputs.append(z)
        z = torch.cat(outputs, dim=2)[:, :, :length]
        z = z.transpose(1, 2).reshape(bsz, length, d)
        return self.o_proj(self.post_norm(z))

    def _mini_batch(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, e: torch.Tensor,
                    state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs f(q_t; W_t) for one mini-batch and the state after it (dual form)."""
        gamma, beta = self.ttt_norm_weight, self.ttt_norm_bias
        target = v - k  # f(k) = k + LN(...): the LN part reconstructs v - k
        last = e[:, :, -1, :].unsqueeze(-1)  # eta_{b,s}: the step to the end of the mini-batch [B, H, b, 1]
        if self.kind == "linear":
            w1, b1 = state
            z1 = k @ w1 + b1
            g1 = ln_l2_grad(z1, target, gamma, beta, self.eps)
            zq = q @ w1 + b1 - (e * (q @ k.transpose(-1, -2))) @ g1 - e @ g1
            new = [w1 - (k * last).transpose(-1, -2) @ g1, b1 - (last * g1).sum(2, keepdim=True)]
        else:
            w1, b1, w2, b2 = state
            z1 = k @ w1 + b1
            x2 = F.gelu(z1)
            z2 = x2 @ w2 + b2
            g2 = ln_l2_grad(z2, target, gamma, beta, self.eps)
            g1 = (g2 @ w2.transpose(-1, -2)) * _gelu_grad(z1)
            z1q = q @ w1 + b1 - (e * (q @ k.transpose(-1, -2))) @ g1 - e @ g1
            x2q = F.gelu(z1q)
            zq = x2q @ w2 + b2 - (e * (x2q @ x2.transpose(-1, -2))) @ g2 - e @ g2
            new = [w1 - (k * last).transpose(-1, -2) @ g1, b1 - (last * g1).sum(2, keepdim=True),
                   w2 - (x2 * last).transpose(-1, -2) @ g2, b2 - (last * g2).sum(2, keepdim=True)]
        return q + ln_forward(zq, gamma, beta, self.eps), new


# ----------------------------------------------------------------------------- the decoder
class TTTRMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype))


class TTTMLP(nn.Module):
    """SwiGLU feed-forward block, as Llama's."""

    def __init__(self, config: TTTConfig) -> None:
        super().__init__()
        d, ff = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, ff, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=False)
        self.down_proj = nn.Linear(ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TTTBlock(nn.Module):
    """Pre-norm residual block: x + TTT(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, config: TTTConfig) -> None:
        super().__init__()
        self.seq_norm = TTTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ttt = TTTLayer(config)
        self.ffn_norm = TTTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = TTTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.ttt(self.seq_norm(x)))
        return x + self.dropout(self.mlp(self.ffn_norm(x)))


class TTTPreTrainedModel(PreTrainedModel):
    config_class = TTTConfig
    base_model_prefix = "model"
    _no_split_modules = ["TTTBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, TTTLayer):
            std = self.config.initializer_range
            for name in ("W1", "W2"):
                if hasattr(module, name):
                    _init.normal_(getattr(module, name), mean=0.0, std=std)
            for name in ("b1", "b2", "ttt_norm_bias"):
                if hasattr(module, name):
                    _init.zeros_(getattr(module, name))
            _init.ones_(module.ttt_norm_weight)
        elif isinstance(module, TTTRMSNorm):
            _init.ones_(module.weight)


class TTTModel(TTTPreTrainedModel):
    """Embeddings, TTT blocks, final norm: the hidden states (no position embeddings: TTT is recurrent)."""

    def __init__(self, config: TTTConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TTTBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = TTTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: Optional[torch.LongTensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                output_hidden_states: Optional[bool] = None, **kwargs: Any) -> BaseModelOutputWithPast:
        """`attention_mask` and cache arguments are accepted and ignored: no padding, no cache."""
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        states = [h] if output_hidden_states else None
        for layer in self.layers:
            h = layer(h)
            if states is not None:
                states.append(h)
        h = self.norm(h)
        return BaseModelOutputWithPast(last_hidden_state=h, hidden_states=tuple(states) if states else None)


class TTTForCausalLM(TTTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TTTConfig) -> None:
        super().__init__(config)
        self.model = TTTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # get/set_input_embeddings (`self.model.embed_tokens`) and get/set_output_embeddings (`self.lm_head`):
    # transformers' EmbeddingAccessMixin defaults, which find both where they are here.

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None,
                                      **kwargs: Any) -> dict[str, Any]:
        return {"input_ids": input_ids}  # no cache: the whole sequence again at every step

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.LongTensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None, output_hidden_states: Optional[bool] = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """`attention_mask` is accepted for generate()'s sake and ignored: the trainer never pads."""
        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states)


AutoConfig.register("ttt", TTTConfig, exist_ok=True)
AutoModelForCausalLM.register(TTTConfig, TTTForCausalLM, exist_ok=True)
