"""What a spec fetches from the Hugging Face hub, as typed records (no hub library imported here).

A trainer's torch-free config sections declare their own assets: a section defines `assets()`
returning `Asset` records, with `key` relative to the section (`hub`, `init_from`), and
`Spec.assets()` collects them with the section's name in front (`data.hub`, `model.init_from`).
The control plane lists, checks and prefetches them without knowing which trainer named them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Literal, Optional

AssetKind = Literal["model", "tokenizer", "dataset"]

# owner/name or a bare canonical name (gpt2, wikitext): the hub's repo-id shape
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


@dataclass(frozen=True)
class Asset:
    """One hub repository a run reads: a model (weights and its tokenizer files), a tokenizer, or a dataset.

    kind:     model, tokenizer or dataset (which files prefetching takes, which cache holds it).
    repo_id:  the hub id (`meta-llama/Llama-3.1-8B-Instruct`, `wikitext`).
    key:      the spec key path that names it (`model.init_from`), for messages.
    config:   a dataset's configuration (`wikitext-103-raw-v1`); None for its default.
    split:    a dataset split the run reads; None: every split.
    revision: a branch, tag or commit; None: the default branch.
    """

    kind: AssetKind
    repo_id: str
    key: str = ""
    config: Optional[str] = None
    split: Optional[str] = None
    revision: Optional[str] = None

    def under(self, section: str) -> "Asset":
        """The same asset with its key prefixed by the section that declared it."""
        return replace(self, key=f"{section}.{self.key}" if self.key else section)

    @property
    def label(self) -> str:
        """`dataset wikitext (config wikitext-103-raw-v1)`: how messages name it."""
        extra = [f"{k} {v}" for k, v in (("config", self.config), ("split", self.split),
                                          ("revision", self.revision)) if v]
        return f"{self.kind} {self.repo_id}" + (f" ({', '.join(extra)})" if extra else "")

    @property
    def identity(self) -> tuple[str, str, Optional[str], Optional[str], Optional[str]]:
        """What makes two declarations the same download (the key path does not)."""
        return (self.kind, self.repo_id, self.config, self.split, self.revision)


def hub_id(value: Optional[str]) -> Optional[str]:
    """`value` when it names a hub repository rather than a local path, else None.

    A value written as a path (`/`, `./`, `../`, `~`) or naming something that exists on disk is
    local; otherwise a value shaped like a repo id (`owner/name` or `name`) is a hub id.
    """
    if not value or value.startswith(("/", "./", "../", "~")) or os.path.exists(value):
        return None
    return value if _REPO_ID.match(value) else None
