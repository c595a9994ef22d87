"""YAML loading that remembers where every key came from, so errors can say file:line."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import re

import yaml

from orchestrator.errors import SpecError



class SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so `on:` (retry.on) stays a key, not True."""


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SpecLoader)


Loc = tuple[Any, ...]
# key path -> (file, line); line is 1-based
LineMap = dict[Loc, tuple[str, int]]


def _walk(node: yaml.Node, loc: Loc, file: str, out: LineMap) -> None:
    out.setdefault(loc, (file, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise SpecError(
                    "duplicate key", file=file, line=key_node.start_mark.line + 1,
                    key=".".join(map(str, loc + (key,))),
                    hint="YAML keeps only the last value of a repeated key; remove one of them",
                )
            seen.add(key)
            out[loc + (key,)] = (file, key_node.start_mark.line + 1)
            _walk(value_node, loc + (key,), file, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, loc + (i,), file, out)


def load_yaml(path: Path) -> tuple[dict[str, Any], LineMap]:
    """Parse a YAML mapping and a map from key paths to source lines."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file not found", file=file, hint="check the path (relative to the current directory)")
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise SpecError(f"cannot read: {exc.__class__.__name__}", file=file)
    try:
        node = yaml.compose(text, Loader=SpecLoader)
        data = safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SpecError(f"invalid YAML: {exc.problem or exc}", file=file, line=line,
                        hint="check indentation and quoting near this line")
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping at the top level, got {type(data).__name__}", file=file, line=1)
    lines: LineMap = {}
    if node is not None:
        _walk(node, (), file, lines)
    return data, lines


def parse_scalar(text: str) -> Any:
    """A `--set` value typed as YAML would type it (1e-3 -> float, true -> bool, [1,2] -> list)."""
    try:
        return safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
