"""Offline compute nodes: hub assets resolved at submit against a hand-populated Hugging Face cache.

The cache is built here, with no network: a tiny GPT-2 saved with `save_pretrained` into the hub
cache layout (`hub/models--org--name/snapshots/<commit>/` + `refs/main`) and a small dataset written
into the datasets cache layout (`datasets/<name>/<config>/<version>/<hash>/`, what `load_dataset`
falls back to offline). The hub is declared unreachable (`ORCH_HUB_REACHABLE=0`), and the submitting
environment has no HF_*_OFFLINE variable, so the job's offline mode can only come from orch.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.record.atomicio import read_json
from tests.conftest import Orch, write_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL = "tiny-org/tiny-gpt2"
DATASET, CONFIG = "tiny-wiki", "tiny"


def _hub_model(hub: Path, repo_id: str) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    config = GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


def _cached_dataset(datasets_cache: Path, name: str, config: str) -> None:
    import datasets
    from datasets.arrow_writer import ArrowWriter

    folder = datasets_cache / name / config / "0.0.0" / "f00d"
    folder.mkdir(parents=True)
    features = datasets.Features({"text": datasets.Value("string")})
    info = datasets.DatasetInfo(dataset_name=name, config_name=config, features=features)
    info.splits = datasets.SplitDict(dataset_name=name)
    rows = {"train": [f"{a}+{b}={a + b}\n" for a in range(40) for b in range(10)], "validation": ["3+4=7\n"] * 40}
    for split, texts in rows.items():
        with ArrowWriter(path=str(folder / f"{name}-{split}.arrow"), features=features) as writer:
            for text in texts:
                writer.write({"text": text})
            n, nbytes = writer.finalize()
        info.splits.add(datasets.SplitInfo(name=split, num_examples=n, num_bytes=nbytes, dataset_name=name))
    info.write_to_directory(str(folder))


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("hf")
    _hub_model(home / "hub", MODEL)
    _cached_dataset(home / "datasets", DATASET, CONFIG)
    return home


@pytest.fixture
def offline_orch(orch: Orch, hf_home: Path, tmp_path: Path) -> Orch:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "ORCH_CLUSTER"):
        orch.env.pop(var, None)
    orch.env.update(HF_HOME=str(hf_home), ORCH_HUB_REACHABLE="0", XDG_CONFIG_HOME=str(tmp_path / "config"),
                    OMP_NUM_THREADS="1")
    return orch


def _spec(tmp_path: Path, init_from: str = MODEL, name: str = "offline") -> Path:
    return write_spec(tmp_path / f"{name}.yaml", f"""
name: {name}
trainer: lm
model: {{arch: gpt2, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 32, init_from: {init_from}}}
tokenizer: {{type: char}}
data: {{hub: {DATASET}, config: {CONFIG}}}
train: {{max_steps: 3, batch_size: 4, log_every: 1, device: cpu}}
eval: {{every: 3, batches: 1}}
checkpoint: {{every: 3, hf_format: false}}
resources: {{cpus_per_task: 1, time: "00:05:00"}}
retry: {{max_attempts: 1}}
""")


def test_dry_run_lists_the_assets_and_whether_they_are_cached(offline_orch: Orch, tmp_path: Path) -> None:
    out = offline_orch("submit", str(_spec(tmp_path, init_from="tiny-org/not-fetched")), "--dry-run").stdout
    assert f"cached  dataset {DATASET} (config {CONFIG})  [data.hub]" in out
    assert "missing model tiny-org/not-fetched  [model.init_from]" in out
    runs = offline_orch.json("submit", str(_spec(tmp_path)), "--dry-run")
    assert {(a["key"], a["repo_id"], a["state"]) for a in runs[0]["assets"]} == {
        ("model.init_from", MODEL, "cached"), ("data.hub", DATASET, "cached")}
    assert runs[0]["spec"]["env"] == {"HF_HOME": offline_orch.env["HF_HOME"], "HF_HUB_OFFLINE": "1",
                                      "HF_DATASETS_OFFLINE": "1"}
    assert "export HF_HUB_OFFLINE=1" in runs[0]["script"]


def test_missing_asset_exits_2_naming_it_and_the_prefetch_command(offline_orch: Orch, tmp_path: Path) -> None:
    spec = _spec(tmp_path, init_from="tiny-org/not-fetched")
    res = offline_orch("submit", str(spec), "--set", "train.lr=0.002", check=2)
    assert "model tiny-org/not-fetched [model.init_from]" in res.stderr
    assert DATASET not in res.stderr.split("hint:")[0]  # the cached one is not reported missing
    assert f"orch prefetch {spec} --set train.lr=0.002" in res.stderr
    assert "Traceback" not in res.stderr
    assert not any(offline_orch.results.iterdir())  # nothing of a refused submission stays behind
    # prefetch cannot fetch it either, and says so the same way
    res = offline_orch("prefetch", str(spec), check=2)
    assert "tiny-org/not-fetched" in res.stderr


def test_prefetch_tokenizes_then_the_job_runs_offline_against_the_cache(offline_orch: Orch, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    report = offline_orch.json("prefetch", str(spec))
    assert {(a["repo_id"], a["state"]) for a in report["assets"]} == {(MODEL, "cached"), (DATASET, "cached")}
    assert report["prepared"] and "tokenized" in report["prepared"][0]["result"]
    (row,) = offline_orch.json("submit", str(spec), "--wait")
    run_dir = Path(row["run_dir"])
    env = read_json(run_dir / "logs" / "environment-1.json")["env"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_DATASETS_OFFLINE"] == "1"
    assert env["HF_HOME"] == offline_orch.env["HF_HOME"]
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["params"]["total"] > 0
    log = (run_dir / "logs" / "training.log").read_text()
    assert "model gpt2" in log


def test_nodes_online_run_without_offline_mode(offline_orch: Orch, tmp_path: Path) -> None:
    (run,) = offline_orch.json("submit", str(_spec(tmp_path, init_from="tiny-org/not-fetched")),
                               "--set", "resources.online=true", "--dry-run")
    assert run["spec"]["env"] == {"HF_HOME": offline_orch.env["HF_HOME"]}
    profile = tmp_path / "config" / "orch" / "cluster.yaml"
    profile.parent.mkdir(parents=True)
    profile.write_text(f"online: true\nhf_home: {tmp_path / 'elsewhere'}\n")
    (run,) = offline_orch.json("submit", str(_spec(tmp_path)), "--dry-run")
    assert run["spec"]["env"] == {"HF_HOME": str(tmp_path / "elsewhere")}
    assert run["assets"][0]["state"] == "missing"  # the profile's cache is the one checked
