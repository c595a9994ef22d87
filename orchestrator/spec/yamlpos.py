"""YAML loading that remembers where every key came from, so errors can say file:line."""
from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any, Optional

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


# Input limits. A spec is a page of YAML: a file of megabytes is a mistake (a dataset passed as a
# spec), and a "billion laughs" of nested aliases expands to more nodes than memory holds.
MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_NODES = 100_000


def expanded_size(node: Optional[yaml.Node], limit: int = MAX_SPEC_NODES) -> int:
    """How many nodes `node` expands to with every alias followed (memoised, so linear in the
    composed graph; stops counting past `limit`)."""
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        memo[key] = 1  # a recursive alias counts once (and SafeLoader rejects it later anyway)
        total = 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        elif isinstance(n, yaml.SequenceNode):
            for item in n.value:
                total += size(item)
                if total > limit:
                    break
        memo[key] = total
        return total

    return size(node) if node is not None else 0


def compose_bounded(text: str, file: str) -> tuple[Any, Optional[yaml.Node]]:
    """(data, node graph) of a YAML document within the size and alias-expansion limits."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"the file is {len(text):,} characters; a spec may hold at most {MAX_SPEC_BYTES:,}",
                        file=file, hint="is this really an experiment spec? data belongs in data.path")
    try:
        loader = SpecLoader(text)
        try:
            node = loader.get_single_node()
            if expanded_size(node) > MAX_SPEC_NODES:
                raise SpecError(
                    f"the YAML expands to more than {MAX_SPEC_NODES:,} values through its aliases (*name)",
                    file=file, hint="a spec this large is a mistake (or an alias bomb); write the values out")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except RecursionError:
        raise SpecError("the YAML is nested too deeply", file=file, hint="a spec is a few levels of mappings")
    return data, node


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


def read_spec_text(path: Path) -> str:
    """A spec file's text, refused before reading when it is not a file or over the size limit."""
    file = str(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            specs = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))[:6]
            raise SpecError("is a directory, not a spec file", file=file,
                            hint="name a YAML file in it" + (f": {', '.join(specs)}" if specs else ""))
        if info.st_size > MAX_SPEC_BYTES:
            raise SpecError(f"the file is {info.st_size:,} bytes; a spec may hold at most {MAX_SPEC_BYTES:,}",
                            file=file, hint="is this really an experiment spec? data belongs in data.path")
        with open(path, encoding="utf-8") as fh:
            return fh.read(MAX_SPEC_BYTES + 1)  # a device or a file that grew: never more than the limit
    except FileNotFoundError:
        raise SpecError("file not found", file=file, hint="check the path (relative to the current directory)")
    except UnicodeDecodeError:
        raise SpecError("cannot read: not UTF-8 text", file=file, hint="a spec is a YAML text file")
    except PermissionError:
        raise SpecError("cannot read: permission denied", file=file)
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror or exc}", file=file)


def load_yaml(path: Path) -> tuple[dict[str, Any], LineMap]:
    """Parse a YAML mapping and a map from key paths to source lines."""
    file = str(path)
    text = read_spec_text(path)
    try:
        data, node = compose_bounded(text, file)
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
        return compose_bounded(text, "--set")[0] if text.strip() else ""
    except yaml.YAMLError:
        return text
