"""`orch generate RUN [--step N | --best | --last] --prompt TEXT... [--interactive]`: text from any checkpoint.

torch, transformers and the trainers package are imported inside `run` only, so the rest of
`orch` starts fast and works where torch is not installed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.record.checkpoints import list_checkpoints
from orchestrator.record.tree import ResultsRoot


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run id (or unique prefix), or a run folder")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="the checkpoint at this step")
    which.add_argument("--best", action="store_true", help="the best checkpoint (by checkpoint.metric)")
    which.add_argument("--last", action="store_true", help="the newest complete checkpoint (the default)")
    p.add_argument("--prompt", nargs="+", default=[], metavar="TEXT", help="one or more prompts")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 = greedy (deterministic)")
    p.add_argument("--top-k", type=int, default=200, metavar="K", help="0 = off")
    p.add_argument("--top-p", type=float, default=None, metavar="P")
    p.add_argument("--seed", type=int, default=0)
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


def run(args: argparse.Namespace) -> int:
    from trainers.framework.generation import GenerationSettings, InteractiveSession, RunCheckpoints, generate

    run_dir = _run_dir(args.results, args.run)
    if not list_checkpoints(run_dir, kinds=("step", "best")):
        raise UserError(f"run {run_dir.name} has no complete checkpoint yet",
                        hint="checkpoints are written every checkpoint.every steps and at the end")
    if not args.prompt and not args.interactive:
        raise UserError("nothing to do", hint="give --prompt TEXT... or --interactive")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k or None, top_p=args.top_p, seed=args.seed)
    source = RunCheckpoints(run_dir, device=_device(args.device))
    which = "best" if args.best else args.step if args.step is not None else "last"
    try:
        session = InteractiveSession(source, sys.stdin, sys.stdout if args.interactive else sys.stderr,
                                     settings, step=which)
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
    if args.interactive:
        return session.run()
    return 0
