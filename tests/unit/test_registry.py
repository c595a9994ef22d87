"""One trainer registry: entry points (`orch.trainers`) and import paths, each trainer with its own schema.

- orch's trainers are registered like anyone's (setup.cfg entry points), and the control plane
  (orchestrator/) never names one;
- an installed package adds a trainer (a real distribution's metadata on the path, the real CLI);
- `package.module:Class` brings its schema through `config_class`; `package.module:TRAINER` is a
  torch-free TrainerInfo;
- every failure is an `UnknownTrainer` with a hint, which the loader turns into file:line.
"""
from __future__ import annotations

import configparser
import importlib.metadata
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from orchestrator.errors import SpecError, UserError
from orchestrator.spec import registry
from orchestrator.spec.load import load_spec, spec_from_run, spec_to_yaml
from orchestrator.spec.registry import TrainerInfo, UnknownTrainer, default_name, lookup, names
from orchestrator.spec.sections import Spec
from trainers.latentwire.config import LatentWireSpec
from trainers.lm.config import LMSpec

REPO = Path(__file__).resolve().parents[2]


def test_setup_cfg_entry_points_are_the_installed_ones() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    declared = dict(line.split(" = ") for line in cfg["options.entry_points"]["orch.trainers"].strip().splitlines())
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=registry.GROUP)}
    assert {k: installed.get(k) for k in declared} == declared, "metadata is stale: run `pip install -e .`"


def test_builtin_trainers_are_registered_with_their_schemas() -> None:
    assert {"lm", "latentwire"} <= set(names()) and registry.DEFAULT not in names()
    lm, lw = lookup("lm"), lookup("latentwire")
    assert lm.spec_class is LMSpec and lm.entry == "trainers.lm.trainer:LMTrainer"
    assert lw.spec_class is LatentWireSpec and lw.entry == "trainers.latentwire.trainer:LatentWireTrainer"
    assert "val_loss" in lm.metrics and "latent" in lw.metrics
    assert lm.paths == ("data.path",) and "model.decoder" in lw.paths_or_ids
    assert "model" not in Spec.model_fields and "data" not in Spec.model_fields  # trainer sections stay out


def test_default_trainer_is_the_default_entry_point(tmp_path: Path) -> None:
    [ep] = [e for e in importlib.metadata.entry_points(group=registry.GROUP) if e.name == registry.DEFAULT]
    assert default_name() == ep.load().name == "lm"
    (tmp_path / "s.yaml").write_text("name: x\nmodel: {d_model: 32, n_head: 2}\ntrain: {max_steps: 3}\n")
    [r] = load_spec(tmp_path / "s.yaml")
    assert isinstance(r.spec, LMSpec) and r.spec.trainer == "lm"
    (tmp_path / "spec.yaml").write_text(spec_to_yaml(r.spec))
    assert "trainer: lm\n" in (tmp_path / "spec.yaml").read_text()  # the run records the name, not "default"
    assert isinstance(spec_from_run(tmp_path / "spec.yaml"), LMSpec)


def test_set_trainer_switches_the_schema(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("name: x\ntrain: {max_steps: 3}\n")
    [r] = load_spec(tmp_path / "s.yaml", overrides=["trainer=latentwire", "data.hub=squad", "model.decoder=d"])
    assert isinstance(r.spec, LatentWireSpec) and r.spec.model.decoder == "d"


@pytest.mark.parametrize("ref, needles", [
    ("lmm", ["unknown trainer 'lmm'", "did you mean 'lm'?", "registered: latentwire, lm"]),
    ("default", ["unknown trainer 'default'"]),
    ("os.system(1)", ["unknown trainer"]),
    ("no_such_pkg.mod:Cls", ["cannot import no_such_pkg.mod", "install the package"]),
    ("json:NoSuchThing", ["module json has no 'NoSuchThing'"]),
    ("json:dumps", ["has no class or TrainerInfo named 'dumps'"]),
])
def test_unknown_trainers_say_what_would_work(ref: str, needles: list[str]) -> None:
    with pytest.raises(UnknownTrainer) as info:
        lookup(ref)
    text = f"{info.value.message} / {info.value.hint}"
    for needle in needles:
        assert needle in text, text


PLUGIN = '''
from pydantic import Field
from orchestrator.spec.registry import TrainerInfo
from orchestrator.spec.sections import Section, Spec

class Toy(Section):
    width: int = Field(8, ge=1)

class ToySpec(Spec):
    toy: Toy = Field(default_factory=Toy)

class WithSchema:
    """A trainer with its own sections."""
    config_class = ToySpec
    metrics = ("val_loss",)

class WithoutSchema:
    pass

class BadSchema:
    config_class = dict

TRAINER = TrainerInfo(name="toy", spec_class=ToySpec, entry="toyplug:WithSchema")
'''


@pytest.fixture
def toyplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "toyplug.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("toyplug", None)
    registry._lookup.cache_clear()


def test_import_path_trainers_bring_their_schema(toyplug: Path) -> None:
    info = lookup("toyplug:WithSchema")
    assert info.name == info.entry == "toyplug:WithSchema" and info.spec_class.__name__ == "ToySpec"
    assert info.description == "A trainer with its own sections." and info.metrics == ("val_loss",)
    assert lookup("toyplug:WithoutSchema").spec_class is Spec
    assert lookup("toyplug:TRAINER").name == "toy"  # a torch-free descriptor
    with pytest.raises(UnknownTrainer, match="config_class must be a subclass"):
        lookup("toyplug:BadSchema")


def test_plugin_sections_are_validated_with_file_and_line(toyplug: Path) -> None:
    (toyplug / "s.yaml").write_text("name: x\ntrainer: toyplug:WithSchema\ntrain: {max_steps: 3}\ntoy:\n  width: 0\n")
    with pytest.raises(UserError) as info:
        load_spec(toyplug / "s.yaml")
    assert "s.yaml:5: toy.width: Input should be greater than or equal to 1" in info.value.render()
    (toyplug / "s.yaml").write_text("name: x\ntrainer: toyplug:WithSchema\ntrain: {max_steps: 3}\ntoy: {widht: 2}\n")
    with pytest.raises(UserError, match="did you mean 'width'"):
        load_spec(toyplug / "s.yaml")
    (toyplug / "s.yaml").write_text("name: x\ntrainer: toyplug:WithSchema\ntrain: {max_steps: 3}\n")
    [r] = load_spec(toyplug / "s.yaml", overrides=["toy.width=3"])
    assert r.spec.toy.width == 3


def test_unknown_trainer_in_a_file_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("name: x\ntrain: {max_steps: 3}\ntrainer: lmm\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "s.yaml")
    assert info.value.render().startswith(f"{tmp_path}/s.yaml:3: trainer: unknown trainer 'lmm'")


def test_no_default_registered(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(registry, "_entry_points", lambda: {})
    with pytest.raises(UnknownTrainer) as info:
        default_name()
    assert "no default trainer is registered" in info.value.message and "pip install -e ." in info.value.hint
    (tmp_path / "s.yaml").write_text("name: x\ntrain: {max_steps: 3}\n")
    with pytest.raises(SpecError, match="no default trainer"):
        load_spec(tmp_path / "s.yaml")


def test_resolve_trainer_uses_the_registry(toyplug: Path) -> None:
    from trainers import resolve_trainer
    from trainers.lm.trainer import LMTrainer

    assert resolve_trainer("lm") is LMTrainer
    with pytest.raises(TypeError, match="not a subclass of trainers.framework.base.Trainer"):
        resolve_trainer("toyplug:TRAINER")
    with pytest.raises(UnknownTrainer, match="unknown trainer 'nope'"):
        resolve_trainer("nope")


def fake_distribution(root: Path, name: str, entry_points: str) -> Path:
    """An installed package as pip leaves it: its module and a .dist-info with entry_points.txt."""
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text(PLUGIN.replace('name="toy"', f'name="{name}"').replace("toyplug:", f"{name}.config:"))
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{registry.GROUP}]\n{entry_points}\n")
    return root


def run_cli(args: list[str], pythonpath: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "PYTHONPATH": f"{REPO}:{pythonpath}"}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_an_installed_package_adds_a_trainer(tmp_path: Path) -> None:
    site = fake_distribution(tmp_path / "site", "acme", "acme = acme.config:TRAINER")
    res = run_cli(["schema", "--trainer", "acme"], site)
    assert res.returncode == 0, res.stderr
    assert '"toy"' in res.stdout and '"width"' in res.stdout
    res = run_cli(["schema", "--trainer", "acm"], site)
    assert res.returncode == 2 and "did you mean 'acme'?" in res.stderr and "latentwire" in res.stderr
    spec = tmp_path / "s.yaml"
    spec.write_text("name: a\ntrainer: acme\ntrain: {max_steps: 3}\ntoy: {width: -1}\n")
    res = run_cli(["submit", "--dry-run", str(spec)], site)
    assert res.returncode == 2 and "s.yaml:4: toy.width" in res.stderr and "Traceback" not in res.stderr


def test_a_name_registered_twice_is_an_error(tmp_path: Path) -> None:
    site = fake_distribution(tmp_path / "site", "rogue", "lm = rogue.config:TRAINER")
    res = run_cli(["schema", "--trainer", "lm"], site)
    assert res.returncode == 2 and "trainer 'lm' is registered more than once" in res.stderr


def test_schema_command_prints_each_trainers_schema(tmp_path: Path) -> None:
    lw = run_cli(["schema", "--trainer", "latentwire"], tmp_path)
    assert lw.returncode == 0 and '"decoder_from_run"' in lw.stdout
    default = run_cli(["schema"], tmp_path)
    assert default.returncode == 0 and '"max_seq_len"' in default.stdout and '"decoder"' not in default.stdout


# Trainer names and their modules may appear in orchestrator/ only as comments naming examples.
NAMED = re.compile(r"\blm\b|latentwire|trainers\.(lm|latentwire)|\bdecoder\b")


def test_the_control_plane_names_no_trainer() -> None:
    found = []
    for path in sorted((REPO / "orchestrator").rglob("*.py")):
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type in (tokenize.NAME, tokenize.STRING) and NAMED.search(tok.string):
                found.append(f"{path.relative_to(REPO)}:{tok.start[0]}: {tok.string[:60]!r}")
    assert not found, "\n".join(found)


def test_trainer_info_checks_itself() -> None:
    with pytest.raises(TypeError, match="spec_class must be a subclass"):
        TrainerInfo(name="x", spec_class=dict, entry="a:B")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="entry must be 'package.module:Class'"):
        TrainerInfo(name="x", spec_class=Spec, entry="a.B")
