"""`orch prefetch SPEC... [--set k=v]... [--no-prepare] [--json]`: fill the shared caches before submitting.

For clusters whose compute nodes have no internet: run it on a login node that has the network
(and the same `HF_HOME`, or the cluster profile's `hf_home`). It fetches every hub asset the specs
name (every sweep point's) into the Hugging Face cache, then runs each trainer's `prepare` hook
(a language-model trainer tokenizes its corpus into the results root's token cache, once per data and
tokenizer), so `orch submit` finds everything and the jobs run offline.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", type=Path, metavar="SPEC", help="experiment spec YAML file(s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, as for `orch submit`; repeatable")
    p.add_argument("--no-prepare", action="store_true",
                   help="fetch hub assets only; skip the trainers' preparation (tokenizing corpora)")
    p.add_argument("--json", action="store_true", help="print what was fetched and prepared as JSON")


def _hook(ref: str) -> Any:
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot load the trainer's prepare hook {ref}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from orchestrator.hub import cache as hub
    from orchestrator.lifecycle.submit import assets_of, prefetch_command, resolve_specs
    from orchestrator.spec.registry import lookup

    prepared = resolve_specs(args.specs, args.overrides, None)
    specs = [s for _, _, group in prepared for s in group]
    assets = assets_of(specs)
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    cached = [a for a in assets if hub.is_cached(a)]
    fetched = hub.ensure(assets, prefetch_command(args.specs, args.overrides))
    for asset in assets:
        say(f"{'fetched' if asset in fetched else 'cached '}  {asset.label}  [{asset.key}]")
    if not assets:
        say("no hub assets: nothing to fetch")
    done: list[dict[str, Any]] = []
    if not args.no_prepare:
        for spec in specs:
            ref = lookup(spec.trainer).prepare
            if ref:
                line = _hook(ref)(spec, args.results)
                say(f"prepared {spec.name}: {line}")
                done.append({"name": spec.name, "result": line})
    if args.json:
        print(json.dumps({"hf_home": hub.hf_home(), "assets": [
            {"kind": a.kind, "repo_id": a.repo_id, "key": a.key, "config": a.config, "split": a.split,
             "revision": a.revision, "state": "fetched" if a in fetched else "cached"} for a in assets],
            "prepared": done, "already_cached": len(cached)}, indent=2))
    return 0
