"""`orch generate RUN [--step N | --best | --last] --prompt TEXT... [--interactive]`: text from any checkpoint.

torch, transformers and the trainers package are imported inside `run` only, so the rest of
`orch` starts fast and works where torch is not installed. Every option is range-checked by
argparse before anything is loaded (a usage error, exit 2). Loading a checkpoint prints no
library progress bars or warnings (transformers' log level is raised to errors: real errors still
show). On a terminal, `--interactive` reads lines with readline: line editing, and a history kept
in `$XDG_STATE_HOME/orch/generate_history` (default `~/.local/state/orch/generate_history`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from orchestrator.commands.argtypes import checked
from orchestrator.errors import UserError
from orchestrator.record.checkpoints import list_checkpoints
from orchestrator.record.tree import ResultsRoot


MAX_NEW_TOKENS = 100_000


# One checked type per generation setting: the options below and the interactive `params KEY=VALUE`.
SETTINGS: dict[str, Callable[[str], Any]] = {
    "max_new_tokens": checked(int, lambda v: 1 <= v <= MAX_NEW_TOKENS, f"an integer from 1 to {MAX_NEW_TOKENS:,}"),
    "temperature": checked(float, lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
    "top_k": checked(int, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "top_p": checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "seed": checked(int, lambda v: 0 <= v < 2**63, "an integer >= 0"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run id (or unique prefix), or a run folder")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="the checkpoint at this step")
    which.add_argument("--best", action="store_true", help="the best checkpoint (by checkpoint.metric)")
    which.add_argument("--last", action="store_true", help="the newest complete checkpoint (the default)")
    p.add_argument("--prompt", nargs="+", default=[], metavar="TEXT", help="one or more prompts")
    p.add_argument("--max-new-tokens", type=SETTINGS["max_new_tokens"], default=200, metavar="N", help=f"tokens to generate per prompt, 1 to {MAX_NEW_TOKENS:,} (default 200)")
    p.add_argument("--temperature", type=SETTINGS["temperature"], default=0.8, metavar="T", help="sampling temperature > 0, or 0 = greedy (deterministic); default 0.8")
    p.add_argument("--top-k", type=SETTINGS["top_k"], default=200,
                   metavar="K", help="sample among the K most likely tokens; 0 = off (default 200)")
    p.add_argument("--top-p", type=SETTINGS["top_p"], default=None,
                   metavar="P", help="nucleus sampling: the smallest set of tokens with probability >= P, in (0, 1]")
    p.add_argument("--seed", type=SETTINGS["seed"], default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt instead of plain text")
    p.add_argument("--interactive", "-i", action="store_true",
                   help="a prompt loop with the commands checkpoints, load <step>, params, quit")


def _run_dir(results: Path, ref: str) -> Path:
    folder = Path(ref)
    if (folder / "ckpt").is_dir():
        return folder
    return ResultsRoot(results).resolve(ref).paths.root


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _quiet_loading() -> None:
    """No progress bars, info logs or library warnings while checkpoints load and text is generated:
    transformers logs errors only; UserWarning/FutureWarning (e.g. about generation configs) are
    dropped. Exceptions are untouched."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (UserWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def history_file() -> Path:
    """Where interactive prompts are remembered between sessions (the XDG state folder)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "orch" / "generate_history"


class LineEditor:
    """A terminal's stdin for the interactive session: each `readline()` is `input()` with readline
    loaded (arrow keys, Ctrl-A/E, Ctrl-R, history across sessions). Ctrl-C drops the line being
    typed; Ctrl-D ends the session."""

    def __init__(self, prompt: str, history: Path) -> None:
        import readline

        self.prompt, self.history, self._readline = prompt, history, readline
        readline.set_history_length(1000)
        try:
            readline.read_history_file(history)
        except OSError:
            pass  # no history yet, or unreadable: start empty

    def readline(self) -> str:
        try:
            return input(self.prompt) + "\n"
        except EOFError:
            print()
            return ""
        except KeyboardInterrupt:
            print()
            return "\n"

    def save(self) -> None:
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            self._readline.write_history_file(self.history)
        except OSError as exc:
            print(f"warning: could not save the prompt history to {self.history}: {exc.strerror}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    _quiet_loading()
    from trainers.framework.generation import GenerationSettings, InteractiveSession, RunCheckpoints, generate

    run_dir = _run_dir(args.results, args.run)
    if not list_checkpoints(run_dir, kinds=("step", "best")):
        raise UserError(f"run {run_dir.name} has no complete checkpoint yet",
                        hint="checkpoints are written every checkpoint.every steps and at the end")
    if not args.prompt and not args.interactive:
        raise UserError("nothing to do", hint="give --prompt TEXT... or --interactive")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k or None, top_p=args.top_p, seed=args.seed)
    source = RunCheckpoints(run_dir, device=_device(args.device))
    which = "best" if args.best else args.step if args.step is not None else "last"
    editor = LineEditor(">>> ", history_file()) if args.interactive and sys.stdin.isatty() else None
    try:
        session = InteractiveSession(source, editor or sys.stdin, sys.stdout if args.interactive else sys.stderr,
                                     settings, step=which, prompt_marker="" if editor else ">>> ", checks=SETTINGS)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc), hint=f"`orch generate {args.run} -i` then `checkpoints` lists them") from None
    for i, prompt in enumerate(args.prompt):
        (text,) = generate(session.model, session.tokenizer, [prompt], settings.max_new_tokens,
                           settings.temperature, settings.top_k, settings.top_p, settings.seed + i)
        if args.json:
            print(json.dumps({"step": session.step, "prompt": prompt, "completion": text}, ensure_ascii=False))
        else:
            print(prompt + text)
            if i + 1 < len(args.prompt):
                print("-" * 40)
    if not args.interactive:
        return 0
    try:
        return session.run()
    finally:
        if editor is not None:
            editor.save()
