"""The `latentwire` evaluation modes: one eval subset, six ways for the context to reach the decoder.

    text          [bos] Context: <context> \\n Question: <q>            as token ids (input_ids)
    embeddings    the same prompt as its own token embeddings (inputs_embeds): must equal `text`
    anchor        embeddings + the anchor ("\\nAnswer:")
    adapter       [bos] <one vector per context token> \\n Question: <q> \\n Answer:  (the encoder and
                  adapter without the K-query bottleneck: compression 1)
    latent        [bos] <K latent vectors> \\n Question: <q> \\n Answer:  (the context compressed)
    token_budget  the anchor prompt with the context cut to its first K tokens (the same budget as latent)

With `model.chat_template`, [bos] is the template up to the user message and every prompt ends
with the template's assistant header. With `model.lora`, `adapter` and `latent` read through the
LoRA-adapted decoder and the four text modes through the original one (adapters off): the
baselines are the frozen decoder's, and they never change while training (evaluated once).

Each mode reports SQuAD F1/EM (percent), first-token top-1/top-5 accuracy, the mean NLL of the
gold answer, the compression ratio (context tokens / vectors the decoder reads for the context),
wall-clock seconds, how many distinct first tokens it predicts, the most frequent ones with their
counts (`dominant_predictions`) and the share of the most frequent (`dominant_share`; near 1 is
collapse). Answers are cut at the first stop token (the tokenizer's eos and every id of the
decoder's `generation_config.eos_token_id`) and decoded without special tokens.
`text` vs `embeddings` checks the inputs_embeds path itself: any difference is a bug, not noise.
"""
from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch

from trainers.framework.generation import decode_answer
from trainers.latentwire.data import Example, PromptPieces
from trainers.latentwire.model import answer_logits, assemble, embed_ids, generate, input_device, pad_ids
from trainers.latentwire.squad_metrics import score

ENCODER_MODES = ("adapter", "latent")  # read the trained encoder (and the LoRA adapters)
FROZEN_MODES = ("text", "embeddings", "anchor", "token_budget")  # do not change while the encoder trains


class ModeRunner:
    """Builds each mode's prompts and runs the frozen decoder on them (this process's share of examples)."""

    def __init__(self, decoder: Any, encoder: Any, tokenizer: Any, pieces: PromptPieces, latent_len: int,
                 ev: Any, device: torch.device, autocast: Callable[[], Any], stops: Sequence[int] = (),
                 baseline: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> None:
        """`stops`: ids that end an answer; `baseline`: the context the text modes run in (LoRA off)."""
        self.decoder, self.encoder, self.tokenizer, self.pieces = decoder, encoder, tokenizer, pieces
        self.k, self.ev, self.device, self.autocast = latent_len, ev, device, autocast
        self.stops = list(stops) or ([pieces.eos] if pieces.eos is not None else [])
        self.baseline = baseline
        self.pad = pieces.eos if pieces.eos is not None else (self.stops[0] if self.stops else 0)

    def prompt_ids(self, mode: str, ex: Example) -> list[int]:
        """Token ids of a text-only mode's prompt."""
        p = self.pieces
        if mode in ("text", "embeddings"):
            return p.bos + p.context_label + ex.context_ids + ex.question_ids + p.end
        if mode == "anchor":
            return p.bos + p.context_label + ex.context_ids + ex.question_ids + p.anchor + p.end
        if mode == "token_budget":
            return p.bos + p.context_label + ex.context_ids[: self.k] + ex.question_ids + p.anchor + p.end
        raise ValueError(f"mode {mode!r} has no text prompt")

    def encoded(self, mode: str, batch: Sequence[Example]) -> list[torch.Tensor]:
        """Each example's context as the encoder delivers it: K latents, or one vector per token (adapter)."""
        ids, mask = pad_ids([ex.context_ids for ex in batch], self.pad, self.device)
        context = self.decoder.get_input_embeddings()(ids.to(input_device(self.decoder))).to(self.device)
        if mode == "latent":
            z = self.encoder(context, mask)
            return [z[i] for i in range(len(batch))]
        _, tokens = self.encoder(context, mask, uncompressed=True)
        return [tokens[i, : len(ex.context_ids)] for i, ex in enumerate(batch)]

    def segments(self, mode: str, batch: Sequence[Example]) -> list[list[torch.Tensor]]:
        """Each example's prompt as embedding segments."""
        emb = lambda ids: embed_ids(self.decoder, ids, self.device)  # noqa: E731
        if mode not in ENCODER_MODES:
            return [[emb(self.prompt_ids(mode, ex))] for ex in batch]
        where = input_device(self.decoder)
        out = []
        for ex, z in zip(batch, self.encoded(mode, batch)):
            segs = [emb(self.pieces.bos)] if self.pieces.bos else []
            out.append(segs + [z.to(device=where, dtype=self.decoder.dtype),
                               emb(ex.question_ids + self.pieces.anchor + self.pieces.end)])
        return out

    def context_vectors(self, mode: str, ex: Example) -> int:
        """How many input vectors carry the context in this mode (for the compression ratio)."""
        if mode == "latent":
            return self.k
        if mode == "token_budget":
            return min(self.k, len(ex.context_ids))
        return len(ex.context_ids)

    @torch.no_grad()
    def run(self, mode: str, batch: Sequence[Example]) -> list[dict[str, Any]]:
        """Per-example records: the greedy prediction, first-token hits, gold-answer NLL."""
        ev = self.ev
        with self.autocast(), (contextlib.nullcontext() if mode in ENCODER_MODES else self.baseline()):
            segs = self.segments(mode, batch)
            logits, targets = answer_logits(self.decoder, segs, [ex.answer_ids for ex in batch])
            if mode == "text":  # the reference path: plain input_ids, as any user of the model would call it
                ids, mask = pad_ids([self.prompt_ids(mode, ex) for ex in batch], self.pad,
                                    input_device(self.decoder), left=True)
                new = generate(self.decoder, input_ids=ids, attention_mask=mask, max_new_tokens=ev.max_new_tokens,
                               stops=self.stops, pad_id=self.pad, temperature=ev.temperature, top_k=ev.top_k,
                               top_p=ev.top_p)
            else:
                embeds, mask = assemble(segs, left=True)
                new = generate(self.decoder, inputs_embeds=embeds, attention_mask=mask,
                               max_new_tokens=ev.max_new_tokens, stops=self.stops, pad_id=self.pad,
                               temperature=ev.temperature, top_k=ev.top_k, top_p=ev.top_p)
        logp = torch.log_softmax(logits.float(), dim=-1)
        first = logits[:, 0].float()
        top5 = first.topk(min(5, first.size(-1)), dim=-1).indices.cpu()
        gold_first = targets[:, 0].cpu()
        records = []
        for i, ex in enumerate(batch):
            n = ex.answer_len  # the answer's own tokens (an eos after them is not part of "the answer")
            nll = -logp[i, torch.arange(n), targets[i, :n]].mean().item() if n else float("nan")
            text = decode_answer(self.tokenizer, new[i].tolist(), self.stops)
            prediction = text.split("\n", 1)[0].strip()  # the answer is the first line
            em, f1 = score(ex.golds, prediction)
            records.append({"id": ex.id, "question": ex.question, "gold_answers": ex.golds,
                            "prediction": prediction, "mode": mode, "em": em, "f1": f1,
                            "first_token": int(new[i, 0]) if new.size(1) else -1,
                            "first_top1": bool(top5[i, 0] == gold_first[i]),
                            "first_top5": bool((top5[i] == gold_first[i]).any()), "nll": nll,
                            "context_tokens": len(ex.context_ids), "context_vectors": self.context_vectors(mode, ex)})
        return records


def evaluate_mode(runner: ModeRunner, mode: str, examples: Sequence[Example], batch_size: int,
                  gather: Callable[[list[Any]], list[Any]]) -> tuple[list[dict[str, Any]], float]:
    """All examples' records (gathered from every process) and the mode's wall-clock seconds."""
    start = time.perf_counter()
    mine: list[dict[str, Any]] = []
    for i in range(0, len(examples), batch_size):
        mine.extend(runner.run(mode, examples[i: i + batch_size]))
    seconds = time.perf_counter() - start
    records = gather(mine)
    slowest = max(gather([seconds]))  # the mode took as long as its slowest process
    return sorted(records, key=lambda r: r["id"]), slowest


def summarize(records: Sequence[dict[str, Any]], seconds: float, tokenizer: Any, top: int = 5) -> dict[str, Any]:
    """A mode's metrics (nested under its name in metrics.json: `latent.first_token_acc`)."""
    n = len(records)
    if not n:
        return {"n": 0}
    mean = lambda key: sum(float(r[key]) for r in records) / n  # noqa: E731
    nlls = [r["nll"] for r in records if r["nll"] == r["nll"]]
    firsts = Counter(r["first_token"] for r in records)
    dominant = firsts.most_common(top)
    return {
        "f1": 100.0 * mean("f1"),
        "em": 100.0 * mean("em"),
        "first_token_acc": mean("first_top1"),
        "first_token_top5_acc": mean("first_top5"),
        "nll": sum(nlls) / len(nlls) if nlls else None,
        "compression": sum(r["context_tokens"] for r in records) / max(1, sum(r["context_vectors"] for r in records)),
        "seconds": round(seconds, 3),
        "prediction_diversity": len(firsts),
        "dominant_share": dominant[0][1] / n,
        "empty_predictions": sum(1 for r in records if not r["prediction"]) / n,
        "dominant_predictions": [[tokenizer.decode([t]) if t >= 0 else "", c] for t, c in dominant],
        "n": n,
    }


def predictions_agree(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> Optional[float]:
    """Fraction of questions where two modes predict the same text (text vs embeddings: 1.0 expected)."""
    by_id = {r["id"]: r["prediction"] for r in b}
    shared = [r for r in a if r["id"] in by_id]
    return sum(r["prediction"] == by_id[r["id"]] for r in shared) / len(shared) if shared else None
