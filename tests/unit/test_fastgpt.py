"""`model.arch: nanogpt` (trainers/lm/fastgpt.py): gpt2's network, lean; a transformers model all the same."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from trainers.lm.config import ModelSpec
from trainers.lm.models import build_config, build_model, flops_per_token, param_counts, supports_length_extrapolation

V = 50
SIZES = dict(n_layer=2, n_head=2, d_model=32, max_seq_len=16)
REPO = Path(__file__).resolve().parents[2]


def _gpt2_weights_into_nanogpt(gpt2: torch.nn.Module, nano: torch.nn.Module) -> None:
    """Copy every weight (GPT-2's Conv1D stores (in, out): transposed into nn.Linear's (out, in))."""
    names = {"attn.c_attn": "c_attn", "attn.c_proj": "attn_proj", "mlp.c_fc": "c_fc", "mlp.c_proj": "mlp_proj",
             "ln_1": "ln_1", "ln_2": "ln_2"}
    nano_state = nano.state_dict()
    with torch.no_grad():
        for name, value in gpt2.state_dict().items():
            if name == "lm_head.weight":
                continue
            target = name
            for old, new in names.items():
                target = target.replace(f".{old}.", f".{new}.")
            transpose = value.dim() == 2 and any(f".{k}." in name for k in ("c_attn", "c_proj", "c_fc"))
            nano_state[target].copy_(value.t() if transpose else value)


def test_nanogpt_computes_what_gpt2_computes_with_the_same_weights():
    torch.manual_seed(0)
    gpt2, nano = build_model(ModelSpec(arch="gpt2", **SIZES), V), build_model(ModelSpec(arch="nanogpt", **SIZES), V)
    assert param_counts(nano) == param_counts(gpt2)
    assert flops_per_token(nano.config, param_counts(nano)["non_embedding"], 16) == \
        flops_per_token(gpt2.config, param_counts(gpt2)["non_embedding"], 16)
    _gpt2_weights_into_nanogpt(gpt2, nano)
    x = torch.randint(0, V, (3, 16))
    assert torch.allclose(nano(input_ids=x).logits, gpt2(input_ids=x).logits, atol=1e-5)
    # tied embeddings, GPT-2's initialization (residual projections scaled by 1/sqrt(2 * n_layer))
    fresh = build_model(ModelSpec(arch="nanogpt", n_layer=8, d_model=256), V)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    block = fresh.transformer.h[0]
    assert abs(block.c_fc.weight.std().item() - 0.02) < 1e-3 and abs(block.mlp_proj.weight.std().item() - 0.005) < 3e-4
    assert supports_length_extrapolation(fresh)[0] is False and build_config(ModelSpec(arch="nanogpt"), V).train_seq_len == 64


def test_nanogpt_saves_in_hugging_face_format_and_loads_and_generates_in_a_fresh_process(tmp_path: Path):
    from trainers.framework.generation import generate
    from trainers.lm.tokenization import CharTokenizer

    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="nanogpt", **SIZES), V).eval()
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "config.json").read_text().count('"orch_nanogpt"') == 1
    tok = CharTokenizer([chr(ord("a") + i) for i in range(26)] + [chr(ord("A") + i) for i in range(24)])
    mine = generate(model, tok, ["abc", "Q"], max_new_tokens=30, temperature=0)  # longer than the window
    assert all(len(t) == 30 for t in mine)
    script = (
        "import trainers.lm.fastgpt  # registers orch_nanogpt, as load_for_generation does\n"
        "from transformers import AutoModelForCausalLM\n"
        "from trainers.framework.generation import generate; from trainers.lm.tokenization import CharTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'model')!r}).eval()\n"
        "tok = CharTokenizer([chr(97 + i) for i in range(26)] + [chr(65 + i) for i in range(24)])\n"
        "print(type(m).__name__, m.lm_head.weight is m.transformer.wte.weight)\n"
        "print(repr(generate(m, tok, ['abc', 'Q'], max_new_tokens=30, temperature=0)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                              "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["NanoGPTForCausalLM True", repr(mine)]


def test_nanogpt_generates_through_transformers_generate_within_its_window():
    from trainers.framework.generation import generate
    from trainers.lm.tokenization import CharTokenizer

    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="nanogpt", **SIZES), V).eval()
    tok = CharTokenizer([chr(ord("a") + i) for i in range(26)] + [chr(ord("A") + i) for i in range(24)])
    hf = generate(model, tok, ["abc"], max_new_tokens=8, temperature=0)  # fits the window: model.generate
    ids = torch.tensor([tok.encode("abc")])
    for _ in range(8):  # greedy by hand
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert hf == [tok.decode(ids[0, 3:].tolist())]
