"""Answers from a decoder with several stop tokens (Llama-3.1-Instruct's layout), and the chat template.

The decoder is built here, offline: a byte-level BPE with Llama-3's special tokens and a Llama-3-style
chat template, eos `<|eot_id|>` in the tokenizer, and `generation_config.eos_token_id` the list
[<|end_of_text|>, <|eom_id|>, <|eot_id|>]. Its weights make it a lookup table of the current token
(one-hot embeddings, attention and MLP outputs zeroed, the LM head mapping token -> next token): after
the prompt it says " Paris", then `<|end_of_text|>`, then " Question" and `<|eot_id|>`, the
continuation that scored F1 0 when only the tokenizer's eos stopped generation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from trainers.framework.generation import decode_answer, stop_token_ids
from trainers.latentwire.config import LatentWireSpec
from test_latentwire import set_up  # the same run folder and setup as the other LatentWire unit tests

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
            "<|eot_id|>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
            "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CITIES = ["Lyon", "Nice", "Lille", "Nantes", "Rennes", "Dijon", "Brest", "Tours", "Metz", "Caen", "Reims", "Pau"]


def _tokenizer(folder: Path, template: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = " ".join(f"{c} is near Paris. Question: Which city? Answer: Paris\nContext:" for c in CITIES) * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    if template:
        hf.chat_template = TEMPLATE
    hf.save_pretrained(str(folder))
    return hf


def llama3_style_decoder(folder: Path, template: bool = True) -> Path:
    """A folder with the tokenizer and the lookup-table Llama described above."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = _tokenizer(folder, template)
    one = lambda text: hf.encode(text, add_special_tokens=False)  # noqa: E731
    ids = {s: hf.convert_tokens_to_ids(s) for s in SPECIALS}
    [paris], [question] = one(" Paris"), one(" Question")
    cues = {one("\nAnswer:")[-1], one("?")[-1], one("<|end_header_id|>\n\n")[-1]}  # where every prompt ends
    following = {**{c: paris for c in cues}, paris: ids["<|end_of_text|>"], ids["<|end_of_text|>"]: question,
                 question: ids["<|eot_id|>"]}
    vocab = len(hf)
    width = (vocab + 7) // 8 * 8  # 4 heads of an even size
    config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|eot_id|>"],
                         max_position_embeddings=512)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, width))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for token, nxt in following.items():
            model.lm_head.weight[nxt, token] = 10.0
    model.generation_config.eos_token_id = [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]
    model.generation_config.bos_token_id = ids["<|begin_of_text|>"]
    model.save_pretrained(str(folder))
    return folder


def paris_squad(path: Path) -> Path:
    data = [{"title": c, "paragraphs": [{"context": f"{c} is a city near Paris, in France.", "qas": [
        {"id": f"{c}{q}", "question": f"Which city is the capital, asks {'one' if q else 'another'}?",
         "answers": [{"text": "Paris", "answer_start": len(c) + 16}]} for q in range(2)]}]} for c in CITIES]
    path.write_text(json.dumps({"version": "v1.1", "data": data}))
    return path


def _trainer(tmp_path: Path, decoder: Path, **model: Any) -> Any:
    spec = LatentWireSpec.model_validate({
        "name": "lw-stops", "trainer": "latentwire", "seed": 1,
        "model": {"decoder": str(decoder), "latent_len": 4, "encoder_layers": 1, "encoder_heads": 2,
                  "encoder_dim": 16, "max_context_tokens": 32, "max_answer_tokens": 4, **model},
        "data": {"path": str(paris_squad(tmp_path / "squad.json")), "val_fraction": 0.3},
        "train": {"max_steps": 1, "batch_size": 4, "device": "cpu"},
        "eval": {"batch_size": 4, "max_new_tokens": 6}, "resources": {"cpus_per_task": 1}})
    return set_up(tmp_path, spec)


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return llama3_style_decoder(tmp_path_factory.mktemp("llama3"))


def test_stop_ids_merge_the_tokenizer_eos_and_the_generation_config_list(decoder_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from trainers.lm.tokenization import load_pretrained

    tok, model = load_pretrained(str(decoder_dir)), AutoModelForCausalLM.from_pretrained(str(decoder_dir))
    eot, end, eom = (tok.hf.convert_tokens_to_ids(s) for s in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"))
    assert stop_token_ids(model, tok) == [eot, end, eom]
    said = tok.encode(" Paris") + [end] + tok.encode(" Question") + [eot]
    assert decode_answer(tok, said, stop_token_ids(model, tok)) == " Paris"
    assert decode_answer(tok, said, [eot]) == " Paris Question"  # stops at the tokenizer's eos only: the old tail
    assert tok.decode(said[: said.index(eot)]) == " Paris<|end_of_text|> Question"  # what used to be scored


@pytest.mark.parametrize("chat", [False, True])
def test_answers_are_clean_in_every_mode(tmp_path: Path, decoder_dir: Path, chat: bool) -> None:
    trainer = _trainer(tmp_path, decoder_dir, chat_template=chat)
    metrics = trainer.evaluate(step=0)
    for mode in ("text", "embeddings", "anchor", "adapter", "latent", "token_budget"):
        assert metrics[mode]["f1"] == 100.0 and metrics[mode]["em"] == 100.0, (mode, metrics[mode])
        assert metrics[mode]["first_token_acc"] == 1.0
    rows = [json.loads(x) for x in trainer.ctx.paths.predictions.read_text().splitlines()]
    assert rows and {r["prediction"] for r in rows} == {"Paris"}
    hf, pieces = trainer.tokenizer.hf, trainer.pieces
    prompt = hf.decode(_prompt_ids(trainer, "anchor"))
    if chat:  # the template wraps the prompt: user turn, then the assistant header the answer follows
        assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nContext:")
        assert prompt.endswith("\nAnswer:<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
        assert pieces.end and hf.decode(pieces.end) == "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    else:
        assert prompt.startswith("<|begin_of_text|>Context:") and prompt.endswith("\nAnswer:")
        assert pieces.end == []


def _prompt_ids(trainer: Any, mode: str) -> list[int]:
    from trainers.latentwire.evaluation import ModeRunner

    runner = ModeRunner(trainer.decoder, trainer.model, trainer.tokenizer, trainer.pieces, 4, trainer.spec.eval,
                        trainer.ctx.device, trainer.ctx.accelerator.autocast, trainer.stops)
    return runner.prompt_ids(mode, trainer.eval_examples[0])


def test_chat_template_asked_but_absent_is_a_clear_error(tmp_path: Path) -> None:
    folder = llama3_style_decoder(tmp_path / "plain", template=False)
    with pytest.raises(ValueError, match="model.chat_template: true, but the decoder's tokenizer has no chat template"):
        _trainer(tmp_path, folder, chat_template=True)


@pytest.mark.parametrize("use_hf", [True, False])
def test_orch_generate_stops_at_every_stop_token_too(decoder_dir: Path, use_hf: bool) -> None:
    """The shared `generate` (`orch generate`, the lm trainer's samples): both of its decoding loops."""
    from transformers import AutoModelForCausalLM

    from trainers.framework.generation import generate
    from trainers.lm.tokenization import load_pretrained

    tok, model = load_pretrained(str(decoder_dir)), AutoModelForCausalLM.from_pretrained(str(decoder_dir))
    out = generate(model, tok, ["Context: Lyon is near Paris.\nQuestion: Which city?\nAnswer:"], max_new_tokens=6,
                   temperature=0, use_hf_generate=use_hf)
    assert out == [" Paris"]
