"""SQuAD for the `latentwire` trainer: questions in, the token pieces of every prompt layout out.

    train, evalset = load_squad(spec.data, seed)         # flat rows: id, title, context, question, answers
    pieces = encode_examples(evalset, tokenizer, spec.model)
    sampler = ExampleSampler(len(train), batch_size, seed, rank, world_size)

Both the SQuAD v1.1/v2.0 JSON layout (`data[].paragraphs[].qas[]`, a local file) and the hub's
flat layout (`data.hub: squad` or `squad_v2`) become the hub's flat rows through `datasets`.
A local file is split by *context* (a stable hash of the paragraph), so no eval question is about
a paragraph the encoder was trained on; the hub's own train/validation splits are used as they
are. Subsets (`data.train_samples`, `data.eval_samples`) are the first N of a seeded shuffle:
the same spec always trains and evaluates on the same questions.

Each prompt is assembled from separately tokenized pieces so that every evaluation mode shares
exactly the same question, anchor and answer ids and differs only in how the context arrives.
With `model.chat_template: true` the tokenizer's chat template wraps every prompt: the pieces
before and after the user message (Llama-3.1: the begin-of-text, header and end-of-turn tokens,
then the assistant header) replace the bare bos, and the answer follows the assistant header.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from trainers.latentwire.squad_metrics import gold_answers

CONTEXT_LABEL = "Context:"
_EVAL_SPLITS = ("validation", "dev", "test")


# ----------------------------------------------------------------------------- loading
def _flatten_articles(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Official nested JSON rows (one per article) -> the hub's flat rows (one per question)."""
    out: dict[str, list[Any]] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for title, paragraphs in zip(batch["title"], batch["paragraphs"]):
        for para in paragraphs:
            for qa in para["qas"]:
                answers = qa.get("answers") or []
                out["id"].append(qa["id"])
                out["title"].append(title)
                out["context"].append(para["context"])
                out["question"].append(qa["question"])
                out["answers"].append({"text": [a["text"] for a in answers],
                                       "answer_start": [int(a["answer_start"]) for a in answers]})
    return out


def _context_bucket(context: str) -> float:
    """A stable number in [0, 1) per paragraph (not Python's salted hash): the split never moves."""
    return int.from_bytes(hashlib.sha1(context.encode("utf-8")).digest()[:8], "big") / 2**64


def load_squad(data_cfg: Any, seed: int) -> tuple[Any, Any]:
    """(train, eval) `datasets.Dataset`s of flat SQuAD rows, subsetted per `data.train/eval_samples`."""
    import datasets

    if data_cfg.path:
        path = Path(data_cfg.path)
        if not path.is_file():
            raise FileNotFoundError(f"data.path {path} does not exist (a SQuAD v1.1/v2.0 JSON file)")
        raw = datasets.load_dataset("json", data_files=str(path), field="data", split="train")
        if "paragraphs" not in raw.column_names:
            raise ValueError(f"{path} is not in the SQuAD layout (data[].paragraphs[].qas[])")
        flat = raw.map(_flatten_articles, batched=True, remove_columns=raw.column_names)
        bucket = [_context_bucket(c) for c in flat["context"]]
        train = flat.select([i for i, b in enumerate(bucket) if b >= data_cfg.val_fraction])
        evalset = flat.select([i for i, b in enumerate(bucket) if b < data_cfg.val_fraction])
    elif data_cfg.hub:
        splits = datasets.load_dataset(data_cfg.hub, data_cfg.config)
        name = next((s for s in _EVAL_SPLITS if s in splits), None)
        if "train" not in splits or name is None:
            raise ValueError(f"hub dataset {data_cfg.hub!r} needs a train and a validation split; has {list(splits)}")
        train, evalset = splits["train"], splits[name]
    else:
        raise ValueError("latentwire reads SQuAD from data.path (a JSON file) or data.hub (squad, squad_v2)")
    if not data_cfg.keep_unanswerable:  # v2.0: questions without answers
        train = train.filter(lambda row: len(row["answers"]["text"]) > 0)
        evalset = evalset.filter(lambda row: len(row["answers"]["text"]) > 0)
    return (_subset(train, data_cfg.train_samples, seed, "train"),
            _subset(evalset, data_cfg.eval_samples, seed + 1, "eval"))


def _subset(ds: Any, n: Optional[int], seed: int, what: str) -> Any:
    if len(ds) == 0:
        raise ValueError(f"the {what} split has no questions (is data.val_fraction too small for this file?)")
    ds = ds.shuffle(seed=seed)
    return ds.select(range(min(n, len(ds)))) if n else ds


# ----------------------------------------------------------------------------- tokenizing
@dataclass
class Example:
    """One question as token pieces. Prompts: text = bos + label + context + question (+ anchor)."""

    id: str
    question: str
    golds: list[str]  # gold answer texts ([""] when unanswerable)
    context_ids: list[int]  # " <context>", truncated to model.max_context_tokens
    question_ids: list[int]  # "\nQuestion: <question>"
    answer_ids: list[int]  # " <first gold answer>" (+ eos): the teacher-forcing target
    answer_len: int  # answer tokens without the eos (what the NLL metric averages over)


@dataclass
class PromptPieces:
    """The token ids every example shares: a prompt is bos + <context> + question (+ anchor) + end."""

    bos: list[int]  # [bos] ([] when the tokenizer has none), or the chat template up to the user message
    context_label: list[int]  # "Context:"
    anchor: list[int]  # "\nAnswer:"
    eos: Optional[int]
    end: list[int] = field(default_factory=list)  # the chat template after the user message (the assistant header)


def special_ids(tokenizer: Any) -> tuple[Optional[int], Optional[int]]:
    """(bos, eos) of a `trainers.lm.tokenization.TextTokenizer` (char tokenizers have neither)."""
    hf = getattr(tokenizer, "hf", None)
    bos = getattr(hf, "bos_token_id", None) if hf is not None else None
    return bos, tokenizer.eos_id


_USER = "\x00user-message\x00"  # a placeholder no template produces by itself


def chat_wrapper(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the user message in the tokenizer's chat template, generation prompt included."""
    hf = getattr(tokenizer, "hf", None)
    if hf is None or not getattr(hf, "chat_template", None):
        raise ValueError("model.chat_template: true, but the decoder's tokenizer has no chat template "
                         "(Instruct decoders ship one in tokenizer_config.json); set model.chat_template: false")
    text = hf.apply_chat_template([{"role": "user", "content": _USER}], tokenize=False, add_generation_prompt=True)
    if text.count(_USER) != 1:
        raise ValueError("the tokenizer's chat template does not place the user message exactly once")
    before, after = text.split(_USER)
    return tokenizer.encode(before), tokenizer.encode(after)


def prompt_pieces(tokenizer: Any, model_cfg: Any) -> PromptPieces:
    bos, eos = special_ids(tokenizer)
    start, end = chat_wrapper(tokenizer) if model_cfg.chat_template else ([bos] if bos is not None else [], [])
    return PromptPieces(bos=start, context_label=tokenizer.encode(CONTEXT_LABEL),
                        anchor=tokenizer.encode("\n" + model_cfg.anchor), eos=eos, end=end)


def encode_examples(ds: Any, tokenizer: Any, model_cfg: Any) -> list[Example]:
    """Tokenize every row once (batched, in the tokenizer's Rust backend when it has one)."""
    _, eos = special_ids(tokenizer)
    golds = [gold_answers(a["text"]) for a in ds["answers"]]
    contexts = tokenizer.encode_batch([" " + c for c in ds["context"]])
    questions = tokenizer.encode_batch(["\nQuestion: " + q.strip() for q in ds["question"]])
    answers = tokenizer.encode_batch([(" " + g[0].strip()) if g[0] else "" for g in golds])
    out = []
    for i, (rid, q) in enumerate(zip(ds["id"], ds["question"])):
        ans = answers[i][: model_cfg.max_answer_tokens]
        target = ans + ([eos] if eos is not None else [])
        if not target:  # an unanswerable question and a tokenizer without eos: nothing to teach
            continue
        out.append(Example(id=rid, question=q, golds=golds[i], context_ids=contexts[i][: model_cfg.max_context_tokens],
                           question_ids=questions[i][: model_cfg.max_question_tokens], answer_ids=target,
                           answer_len=len(ans)))
    return out


def corpus_text(ds: Any) -> str:
    """Contexts, questions and answers of a split: what a tokenizer for a tiny decoder is trained on."""
    seen: set[str] = set()
    parts = []
    for c in ds["context"]:
        if c not in seen:
            seen.add(c)
            parts.append(c)
    parts.extend("Question: " + q for q in ds["question"])
    parts.extend(" ".join(a["text"]) for a in ds["answers"])
    return "\n".join(parts)


# ----------------------------------------------------------------------------- sampling
class ExampleSampler:
    """A seeded permutation per epoch; each process takes its own slice of every global batch.

    Resumable exactly (its state is the epoch and the position), and the same on any number of
    processes: a global batch is the next `batch_size * world_size` indices of the permutation.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n < batch_size * world_size:
            raise ValueError(f"{n} training questions cannot fill a global batch of {batch_size} x {world_size}")
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def next_indices(self) -> list[int]:
        span = self.batch_size * self.world_size
        if self.pos + span > self.n:  # drop the last partial batch, as DistributedSampler(drop_last=True)
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        start = self.pos + self.rank * self.batch_size
        self.pos += span
        return self._perm[start: start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._perm = self._permutation()
