"""`orch schema`: the spec's JSON Schema, for editors and validation in CI."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trainer", default="lm", help="the schema for this trainer's spec (lm, latentwire)")


def run(args: argparse.Namespace) -> int:
    from orchestrator.spec.schema import spec_class_for

    print(json.dumps(spec_class_for(args.trainer).model_json_schema(), indent=2))
    return 0
