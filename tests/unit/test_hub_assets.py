"""Hub assets as the trainers' sections declare them, and the reachability decision (no network)."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.hub import cache
from orchestrator.hub.assets import Asset, hub_id
from orchestrator.spec.schema import load_spec

REPO = Path(__file__).resolve().parents[2]


def test_hub_ids_and_local_paths(tmp_path: Path) -> None:
    assert hub_id("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"
    assert hub_id("gpt2") == "gpt2"
    assert hub_id(str(tmp_path)) is None and hub_id("./model") is None and hub_id("~/m") is None
    assert hub_id("a/b/c") is None and hub_id(None) is None


def test_each_trainer_declares_its_own_assets() -> None:
    (full,) = load_spec(REPO / "jobs" / "latentwire_full.yaml", [], None)
    assert [(a.kind, a.repo_id, a.key) for a in full.spec.assets()] == [
        ("model", "meta-llama/Llama-3.1-8B-Instruct", "model.decoder"), ("dataset", "squad", "data.hub")]
    (smoke,) = load_spec(REPO / "jobs" / "latentwire_smoke.yaml", [], None)
    assert smoke.spec.assets() == []  # the tiny random decoder is built, a local file is read
    (lm,) = load_spec(REPO / "jobs" / "quickstart.yaml",
                      ["model.init_from=org/base", "tokenizer.type=pretrained", "tokenizer.name_or_path=org/tok"], None)
    assert {(a.kind, a.repo_id, a.key) for a in lm.spec.assets()} == {
        ("model", "org/base", "model.init_from"), ("tokenizer", "org/tok", "tokenizer.name_or_path")}
    sweep = load_spec(REPO / "jobs" / "wikitext103_scaling.yaml", [], None)
    assert {a.label for p in sweep for a in p.spec.assets()} == {"dataset wikitext (config wikitext-103-raw-v1)"}
    assert Asset("dataset", "x", split="train").label == "dataset x (split train)"


@pytest.mark.parametrize("env,expected", [({"HF_HUB_OFFLINE": "1"}, False), ({"ORCH_HUB_REACHABLE": "0"}, False),
                                          ({"ORCH_HUB_REACHABLE": "1"}, True),
                                          ({"HF_HUB_OFFLINE": "1", "ORCH_HUB_REACHABLE": "1"}, False)])
def test_reachability_is_decided_by_the_environment_first(env: dict, expected: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_OFFLINE", "ORCH_HUB_REACHABLE"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cache.hub_reachable.cache_clear()
    try:
        assert cache.hub_reachable() is expected
    finally:
        cache.hub_reachable.cache_clear()
