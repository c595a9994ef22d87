"""The shared Hugging Face cache: is an asset in it, can the hub be reached, fetch it, run jobs offline.

Compute nodes of most clusters have no internet, so every hub asset a spec names is resolved on
the submitting side: `orch prefetch` fills the cache (on a login node with the network),
`orch submit` checks it, and jobs run with `HF_HUB_OFFLINE=1` and `HF_DATASETS_OFFLINE=1`
against the same cache (`HF_HOME`), unless the spec (`resources.online`) or the cluster profile
(`online: true`) says the nodes reach the hub.

Presence is asked of the libraries' own caches: `huggingface_hub.snapshot_download(...,
local_files_only=True)` for models and tokenizers, the `datasets` cache builder (what
`load_dataset` itself falls back to offline) for datasets. Where the cache lives is the
profile's `hf_home`, else the submitting environment's (`HF_HOME`, default ~/.cache/huggingface).

Whether the hub is reachable is decided without network when the environment says so:
`HF_HUB_OFFLINE=1` means no, `ORCH_HUB_REACHABLE=0|1` forces the answer (tests, air-gapped
sites); otherwise one TCP connection to the hub's endpoint, with a short timeout.
"""
from __future__ import annotations

import functools
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlparse

from orchestrator.hub.assets import Asset

if TYPE_CHECKING:
    from orchestrator.spec.profile import ClusterProfile
    from orchestrator.spec.sections import Spec

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
REACHABLE_ENV = "ORCH_HUB_REACHABLE"
CONNECT_TIMEOUT = 3.0
# files a model snapshot needs, by any one of these names
_WEIGHTS = (".safetensors", ".bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# what prefetching skips: other frameworks' weights and the original (non-transformers) checkpoints
_MODEL_IGNORE = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.gguf", "*.pth", "original/*"]
_TOKENIZER_ALLOW = ["*.json", "*.model", "*.txt", "*.tiktoken"]


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def use_profile_cache(profile: "ClusterProfile") -> None:
    """Point this process's Hugging Face libraries at the profile's cache (call before importing them)."""
    if profile.hf_home:
        os.environ["HF_HOME"] = os.path.abspath(profile.hf_home)
        for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE"):
            os.environ.pop(var, None)  # the profile's cache is the one jobs get: nothing may override it here


def hf_home() -> str:
    """The cache location of this (submitting) side, as huggingface_hub resolves it."""
    from huggingface_hub import constants

    return os.path.abspath(os.path.expanduser(constants.HF_HOME))


def nodes_online(spec: "Spec", profile: "ClusterProfile") -> bool:
    return spec.resources.online if spec.resources.online is not None else bool(profile.online)


def job_env(spec: "Spec", profile: "ClusterProfile") -> dict[str, str]:
    """Variables a job gets for the hub: the cache location, and offline mode unless nodes are online.
    A value the spec's own `env:` sets wins."""
    env = {"HF_HOME": hf_home()}
    if not nodes_online(spec, profile):
        env.update({var: "1" for var in OFFLINE_VARS})
    return {k: v for k, v in env.items() if k not in spec.env}


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether this machine can reach the hub (see the module doc); asked once per process."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return False
    forced = os.environ.get(REACHABLE_ENV)
    if forced is not None and forced.strip():
        return _truthy(forced)
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _snapshot(asset: Asset) -> Optional[Path]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(asset.repo_id, revision=asset.revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        return None


def _dataset_cached(asset: Asset) -> bool:
    from datasets.packaged_modules.cache.cache import Cache

    import datasets

    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()  # "Found the latest cached dataset ..." is not news here
    try:
        builder = Cache(dataset_name=asset.repo_id.split("/")[-1], repo_id=asset.repo_id,
                        config_name=asset.config, version="auto", hash="auto")
    except (ValueError, FileNotFoundError, OSError):
        return False
    finally:
        datasets.logging.set_verbosity(verbosity)
    splits = builder.info.splits or {}
    return asset.split is None or asset.split in splits


def is_cached(asset: Asset) -> bool:
    """Whether a job could load `asset` from this side's cache with the hub offline."""
    if asset.kind == "dataset":
        return _dataset_cached(asset)
    folder = _snapshot(asset)
    if folder is None:
        return False
    names = {p.name for p in folder.rglob("*")}
    if asset.kind == "tokenizer":
        return any(n in names for n in _TOKENIZER_FILES)
    return "config.json" in names and any(n.endswith(_WEIGHTS) for n in names)


def fetch(asset: Asset) -> str:
    """Download `asset` into the cache (needs the network); returns where it landed."""
    if asset.kind == "dataset":
        import datasets

        loaded = datasets.load_dataset(asset.repo_id, asset.config, split=asset.split, revision=asset.revision)
        files = getattr(loaded, "cache_files", None)
        if isinstance(files, dict):  # a DatasetDict: {split: [files]}
            files = [f for fs in files.values() for f in fs]
        return os.path.dirname(files[0]["filename"]) if files else "the datasets cache"
    from huggingface_hub import snapshot_download

    if asset.kind == "tokenizer":
        return snapshot_download(asset.repo_id, revision=asset.revision, allow_patterns=_TOKENIZER_ALLOW)
    return snapshot_download(asset.repo_id, revision=asset.revision, ignore_patterns=_MODEL_IGNORE)


def ensure(assets: list[Asset], command: str, *, fetch_missing: bool = True) -> list[Asset]:
    """Make sure every asset is in the cache; returns those fetched now.

    Missing ones are fetched when the hub is reachable (and `fetch_missing`); otherwise a
    `UserError` (exit 2) names each missing asset, the spec key that names it, and the
    `command` that fetches them (`orch prefetch SPEC...`).
    """
    from orchestrator.errors import UserError

    missing = [a for a in assets if not is_cached(a)]
    if not missing:
        return []
    if not (fetch_missing and hub_reachable()):
        listing = "; ".join(f"{a.label} [{a.key}]" for a in missing)
        raise UserError(
            f"{len(missing)} hub asset(s) missing from the Hugging Face cache {hf_home()} and the hub cannot "
            f"be reached from here: {listing}",
            hint=f"on a machine with the network and the same cache (HF_HOME), run: {command}")
    for asset in missing:
        print(f"fetching {asset.label} [{asset.key}] into {hf_home()}", file=sys.stderr, flush=True)
        fetch(asset)
    return missing
