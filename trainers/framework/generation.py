"""Text generation from a trained model, batch or interactive (`orch generate`).

`generate` uses transformers' `model.generate` while the text fits in the model's
training window and falls back to nanoGPT's loop (crop the context to the window,
sample the next token) when it does not: gpt2 has no positions beyond its window,
and a RoPE model samples best from the context length it was trained on.
Sampling runs under `torch.random.fork_rng`, so generating samples mid-training
does not change the training run's random stream (exact resume stays exact).

Generation stops at any of `stop_token_ids(model, tokenizer)`: the tokenizer's eos and the ids of
the model's `generation_config.eos_token_id` (a list for Llama-3.1-Instruct: `<|end_of_text|>`,
`<|eom_id|>`, `<|eot_id|>`). `decode_answer` cuts the ids at the first of them and decodes
without special tokens, so " Paris<|end_of_text|> Question..." reads "Paris", not the whole tail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, TextIO

import torch

# --------------------------------------------------------------------------- stop tokens


def _special_ids(hf_tokenizer: Any) -> set[int]:
    """Every id the HF tokenizer treats as special (named ones and added tokens marked special)."""
    ids = set(getattr(hf_tokenizer, "all_special_ids", None) or [])
    for i, token in (getattr(hf_tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(i))
    return ids


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids that end a generation: the tokenizer's eos, then the model's `generation_config.eos_token_id`.

    `eos_token_id` may be one id or a list. A model id is taken only when the tokenizer knows it as a
    special token: a config default (LlamaConfig's eos 2) must not cut the text of a char tokenizer,
    for which id 2 is an ordinary character.
    """
    stops: list[int] = []
    if tokenizer.eos_id is not None:
        stops.append(int(tokenizer.eos_id))
    hf = getattr(tokenizer, "hf", None)
    config = getattr(model, "generation_config", None)
    found = getattr(config, "eos_token_id", None) if config is not None else None
    if hf is not None and found is not None:
        special = _special_ids(hf)
        for i in ([found] if isinstance(found, int) else list(found)):
            if int(i) in special and int(i) not in stops:
                stops.append(int(i))
    return stops


def cut_at_stop(ids: Sequence[int], stops: Sequence[int]) -> list[int]:
    """`ids` up to (without) the first stop id."""
    out = []
    for i in ids:
        if int(i) in stops:
            break
        out.append(int(i))
    return out


def decode_answer(tokenizer: Any, ids: Sequence[int], stops: Sequence[int]) -> str:
    """Generated ids as text: cut at the first stop id, decoded without special tokens."""
    ids = cut_at_stop(ids, stops)
    hf = getattr(tokenizer, "hf", None)
    if hf is not None:
        return hf.decode(ids, skip_special_tokens=True)
    return tokenizer.decode(ids)


# --------------------------------------------------------------------------- batch generation


def context_window(model: Any) -> int:
    """The context generation keeps: the training window when recorded, else the positional limit."""
    config = model.config
    for name in ("train_seq_len", "n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    return 1024


def _start_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt ids; an empty prompt starts from EOS, or a newline, or token 0 (as nanoGPT starts from "\\n")."""
    ids = tokenizer.encode(prompt)
    if ids:
        return ids
    if tokenizer.eos_id is not None:
        return [tokenizer.eos_id]
    return tokenizer.encode("\n") or [0]


def _warpers(temperature: float, top_k: int | None, top_p: float | None) -> Any:
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


@torch.no_grad()
def _sample_loop(
    model: Any, ids: torch.Tensor, max_new_tokens: int, window: int, temperature: float,
    top_k: int | None, top_p: float | None, stops: Sequence[int],
) -> torch.Tensor:
    """nanoGPT's generate: crop to the last `window` tokens, pick the next token, repeat."""
    warpers = _warpers(float(temperature), top_k, top_p) if temperature > 0 else None
    for _ in range(max_new_tokens):
        context = ids[:, -window:]
        logits = model(input_ids=context).logits[:, -1, :].float()
        if warpers is None:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(warpers(context, logits), dim=-1)
            next_id = torch.multinomial(probs, num_samples=1)
        ids = torch.cat([ids, next_id], dim=1)
        if int(next_id) in stops:
            break
    return ids


@torch.no_grad()
def _hf_generate(
    model: Any, ids: torch.Tensor, max_new_tokens: int, temperature: float,
    top_k: int | None, top_p: float | None, stops: Sequence[int],
) -> torch.Tensor:
    from transformers import GenerationConfig

    options: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        # top_k=0 disables top-k: left unset, transformers would apply its default of 50.
        options = {"do_sample": True, "temperature": float(temperature), "top_k": top_k or 0, "top_p": top_p or 1.0}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=list(stops) or None,
        pad_token_id=stops[0] if stops else 0,
        **options,
    )
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    *,
    use_hf_generate: bool | None = None,
) -> list[str]:
    """The continuation (without the prompt) of each prompt; temperature 0 is greedy and deterministic.

    Prompt i is sampled with seed `seed + i`, so a prompt's sample does not depend on the others.
    `use_hf_generate` forces (True) or forbids (False) `model.generate`; by default it is used when
    prompt + continuation fit in the context window.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    window = context_window(model)
    device = _device_of(model)
    stops = stop_token_ids(model, tokenizer)
    devices = [device] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for i, prompt in enumerate(prompts):
            ids = torch.tensor([_start_ids(tokenizer, prompt)[-window:]], dtype=torch.long, device=device)
            fits = ids.shape[1] + max_new_tokens <= window
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed + i)
                if use_hf_generate if use_hf_generate is not None else fits:
                    out = _hf_generate(model, ids, max_new_tokens, temperature, top_k, top_p, stops)
                else:
                    out = _sample_loop(model, ids, max_new_tokens, window, temperature, top_k, top_p, stops)
            outputs.append(decode_answer(tokenizer, out[0, ids.shape[1] :].tolist(), stops))
    finally:
        model.train(was_training)
    return outputs


# --------------------------------------------------------------------------- interactive session


@dataclass
class CheckpointEntry:
    """A checkpoint as the interactive session shows it."""

    step: int
    path: str
    best: bool = False
    last: bool = False


class CheckpointSource(Protocol):
    """Where the interactive session finds checkpoints (`RunCheckpoints` for a run folder)."""

    def list(self) -> list[CheckpointEntry]: ...

    def load(self, entry: CheckpointEntry) -> tuple[Any, Any]:
        """(model, tokenizer) of a checkpoint, ready for `generate`."""
        ...


class RunCheckpoints:
    """The step and best checkpoints of a run folder (complete ones: `orchestrator.record.checkpoints`)."""

    def __init__(self, run_dir: Any, device: str | torch.device = "cpu"):
        self.run_dir = run_dir
        self.device = device

    def list(self) -> list[CheckpointEntry]:
        from orchestrator.record.checkpoints import list_checkpoints

        found = list_checkpoints(self.run_dir, kinds=("step", "best"))
        newest = max((c.step for c in found if c.kind == "step"), default=None)
        return [
            CheckpointEntry(c.step, str(c.path), best=c.kind == "best", last=c.kind == "step" and c.step == newest)
            for c in found
        ]

    def load(self, entry: CheckpointEntry) -> tuple[Any, Any]:
        from trainers.framework.checkpoint import load_for_generation

        model, tokenizer, _ = load_for_generation(self.run_dir, step=entry.step, best=entry.best, device=self.device)
        return model, tokenizer


@dataclass
class GenerationSettings:
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float | None = None
    seed: int = 0

    def update(self, key: str, value: str, parse: Callable[[str], Any] | None = None) -> None:
        """Set one setting from text ("none" or "off" clears top_k/top_p, as top_k=0 does); `parse`: the
        caller's checked conversion (its range), else the setting's type."""
        types = {f.name: f.type for f in fields(self)}
        if key not in types:
            raise ValueError(f"unknown setting {key!r}; settings: {', '.join(types)}")
        if value.lower() in ("none", "off") and key in ("top_k", "top_p"):
            setattr(self, key, None)
            return
        cast: Callable[[str], Any] = parse or (float if key in ("temperature", "top_p") else int)
        try:
            parsed = cast(value)
        except Exception as exc:  # the caller's checker says what it expected (argparse's ArgumentTypeError)
            raise ValueError(f"{key}: {exc}") from None
        setattr(self, key, None if key == "top_k" and parsed == 0 else parsed)


HELP = """commands:
  checkpoints              list the run's checkpoints
  load <step|best|last>    switch to another checkpoint
  params                   parameter counts of the loaded model and the generation settings
  params KEY=VALUE ...     change settings: max_new_tokens, temperature, top_k, top_p, seed
  help                     this text
  quit                     leave (also: exit, Ctrl-D)
anything else is a prompt: the model continues it."""


class InteractiveSession:
    """The read-eval-print loop of `orch generate --interactive`, on any input/output streams."""

    def __init__(
        self,
        source: CheckpointSource,
        stdin: TextIO,
        stdout: TextIO,
        settings: GenerationSettings | None = None,
        step: int | str | None = "last",
        prompt_marker: str = ">>> ",
        checks: dict[str, Callable[[str], Any]] | None = None,
    ):
        self.source = source
        self.stdin = stdin
        self.stdout = stdout
        self.settings = settings or GenerationSettings()
        self.prompt_marker = prompt_marker
        self.checks = checks or {}  # setting -> its checked conversion (`orch generate`'s option types)
        self.model: Any = None
        self.tokenizer: Any = None
        self.step: int | None = None
        if step is not None:
            self.load(step)

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def _resolve(self, which: int | str) -> CheckpointEntry:
        checkpoints = self.source.list()
        if not checkpoints:
            raise ValueError("this run has no checkpoints yet")
        if which == "last":
            return next((c for c in checkpoints if c.last), max(checkpoints, key=lambda c: c.step))
        if which == "best":
            best = next((c for c in checkpoints if c.best), None)
            if best is None:
                raise ValueError("no checkpoint is marked best")
            return best
        step = int(which)
        for c in sorted(checkpoints, key=lambda c: c.best):  # a step checkpoint before best at the same step
            if c.step == step:
                return c
        raise ValueError(f"no checkpoint at step {step}; steps: {', '.join(str(c.step) for c in checkpoints)}")

    def load(self, which: int | str) -> None:
        info = self._resolve(which)
        self.model, self.tokenizer = self.source.load(info)
        self.step = info.step
        self.say(f"loaded checkpoint step {info.step} ({info.path})")

    def show_checkpoints(self) -> None:
        for c in self.source.list():
            tags = [t for t, on in (("best", c.best), ("last", c.last), ("loaded", c.step == self.step)) if on]
            self.say(f"  step {c.step:>8}  {c.path}" + (f"  [{', '.join(tags)}]" if tags else ""))

    def params(self, assignments: Sequence[str]) -> None:
        for item in assignments:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expected KEY=VALUE, got {item!r}")
            self.settings.update(key.strip(), value.strip(), self.checks.get(key.strip()))
        if self.model is not None:
            from trainers.lm.models import param_counts

            counts = param_counts(self.model)
            self.say(f"model: {counts['total']:,} parameters ({counts['non_embedding']:,} non-embedding), step {self.step}")
        self.say("settings: " + ", ".join(f"{k}={v}" for k, v in asdict(self.settings).items()))

    def complete(self, prompt: str) -> str:
        if self.model is None:
            raise ValueError("no checkpoint loaded: use `load <step>`")
        s = self.settings
        (text,) = generate(self.model, self.tokenizer, [prompt], s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed)
        return text

    def handle(self, line: str) -> bool:
        """Run one input line; False when the session should end."""
        words = line.split()
        command = words[0] if words else ""
        if command in ("quit", "exit"):
            return False
        if command == "help":
            self.say(HELP)
        elif command == "checkpoints":
            self.show_checkpoints()
        elif command == "load" and len(words) == 2:
            self.load(words[1])
        elif command == "params":
            self.params(words[1:])
        elif line.strip():
            self.say(line + self.complete(line))
        return True

    def run(self) -> int:
        """Loop until quit or end of input; errors are reported and the session goes on."""
        self.say("type a prompt, or `help`")
        while True:
            self.stdout.write(self.prompt_marker)
            self.stdout.flush()
            line = self.stdin.readline()
            if not line:
                break
            try:
                if not self.handle(line.rstrip("\n")):
                    break
            except (ValueError, KeyError, OSError) as e:
                self.say(f"error: {e}")
        return 0
