"""`orch schema [--trainer NAME]`: a trainer's spec JSON Schema, for editors and validation in CI."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trainer", metavar="NAME",
                   help="a registered trainer or 'package.module:Class' (default: the default trainer)")


def run(args: argparse.Namespace) -> int:
    from orchestrator.errors import UserError
    from orchestrator.spec.registry import UnknownTrainer, default_name, lookup

    try:
        info = lookup(args.trainer if args.trainer is not None else default_name())
    except UnknownTrainer as exc:
        raise UserError(exc.message, hint=exc.hint) from None
    print(json.dumps(info.spec_class.model_json_schema(), indent=2))
    return 0
